#!/usr/bin/env bash
# Round 4 of the default NLA (issue 13; docs/results.md §12), IN PROGRESS: not what ships yet. It starts from
# the run directory of scripts/reproduce_default.sh (its round-1 extraction and round-3 NLA) and is
# resumable: rerun it after a kill and every finished step is skipped, every training run resumes.
#
#   bash scripts/round4.sh [RUN_DIR]        # default runs/nla, as reproduce_default.sh
set -euo pipefail
RUN=${1:-runs/nla}
R=$RUN/round4
A=$RUN/extract/acts
V3=$RUN/round3/ship            # the round-3 NLA (also what src/nla/resources/default_nla held before round 4)
C=$RUN/compact/teach           # the compact teacher's text of the same rows (round 2)
T1="env OMP_NUM_THREADS=1"
T2="env OMP_NUM_THREADS=2"
mkdir -p "$R/teach"
teach() {  # DATA SPLIT OUT
  [ -f "$3" ] || $T1 nla teach --data "$1" --split "$2" --teacher offline --style rich --tail-tokens 6 --top-k 3 --out "$3"
}
extract() {  # CORPUS OUT: training rows only (no eval split)
  [ -d "$2" ] || $T1 nla extract --model smollm2-135m --corpus "$1" --out "$2" --layer 20 --positions-per-doc 10 \
    --skip 50 --max-tokens 512 --split-fractions 0.5 0.5 0 0
}

# 1. Data: the rich teacher on the round-1 rows; passages in six other languages; topic-balanced chats
for split in eval ar_sft av_sft rl; do teach "$A" $split "$R/teach/$split.parquet"; done
[ -f "$R/locale.jsonl" ] || python scripts/locale_corpus.py --out "$R/locale.jsonl"
extract "$R/locale.jsonl" "$R/locale_acts"
[ -f "$R/topics.jsonl" ] || $T1 nla corpus build --prompts scripts/topic_prompts.yaml --n-chat 900 --n-web 0 \
  --out "$R/topics.jsonl"
extract "$R/topics.jsonl" "$R/topics_acts"
for split in av_sft ar_sft; do
  teach "$R/locale_acts" $split "$R/teach/locale_$split.parquet"
  teach "$R/topics_acts" $split "$R/teach/topics_$split.parquet"
done

# 2. Does the AR read the rich text better than the compact one? The same start (the round-3 AR), steps and
#    rows for both; then both read their style's text of the card's 128 held-out rows.
ar_sft() {  # NAME TRAIN EVAL
  [ -d "$R/$1/final" ] || $T1 nla train ar --init "$V3/ar" --data "$2" --eval-data "$3" --out-dir "$R/$1" \
    --max-steps 300 --batch-size 16 --lr 2e-4 --warmup-steps 10 --save-adapter-only --eval-every 0 \
    --save-every 25 --eval-max-rows 512
}
ar_sft ar_rich "$R/teach/ar_sft.parquet" "$R/teach/eval.parquet" &
# 3. AV-SFT in LoRA from the round-3 AV: the round-1 av_sft and rl rows and the other languages (14,310 rows)
[ -d "$R/av_sft/final" ] || $T1 nla train av --init "$V3/av" \
  --data "$R/teach/av_sft.parquet,$R/teach/rl.parquet,$R/teach/locale_av_sft.parquet" \
  --eval-data "$R/teach/eval.parquet" --out-dir "$R/av_sft" --max-steps 300 --batch-size 16 --lr 3e-4 \
  --warmup-steps 15 --max-response-tokens 128 --eval-every 0 --eval-rows 96 --save-every 25
wait
ar_sft ar_compact "$C/ar_sft.parquet" "$C/eval.parquet"
python bench/teacher_text.py --train-data "$R/teach/ar_sft.parquet" --rows 128 --drop "Before it:" \
  --pair "rich=$R/ar_rich/final,$R/teach/eval.parquet" --pair "compact=$R/ar_compact/final,$C/eval.parquet"
# 4. Stage-2 AR (topic chats, other languages, ar_sft), then refit on 512 of the AV's own explanations and the
#    round trip on the card's rows with the card's lookup bar
[ -d "$R/ar_rich2/final" ] || $T1 nla train ar --init "$R/ar_rich/final" \
  --data "$R/teach/topics_ar_sft.parquet,$R/teach/locale_ar_sft.parquet,$R/teach/ar_sft.parquet" \
  --eval-data "$R/teach/eval.parquet" --baseline-data "$R/teach/ar_sft.parquet" --out-dir "$R/ar_rich2" \
  --max-steps 150 --batch-size 16 --lr 1e-4 --warmup-steps 10 --save-adapter-only --eval-every 0 --save-every 25 \
  --eval-max-rows 512 --seed 1
[ -f "$R/av_text.parquet" ] || nla verbalize --av "$R/av_sft/final" --data "$A" --split ar_sft --limit 512 \
  --max-new-tokens 144 --out "$R/av_text.parquet"
[ -d "$R/refit_ar/final" ] || nla train ar --init "$R/ar_rich2/final" --data "$R/av_text.parquet" \
  --eval-data "$R/teach/eval.parquet" --baseline-data "$R/teach/ar_sft.parquet" --out-dir "$R/refit_ar" \
  --max-steps 100 --batch-size 16 --lr 1e-4 --warmup-steps 10 --save-adapter-only --eval-every 0 --save-every 25 \
  --eval-max-rows 512
nla eval --sft-av "$R/av_sft/final" --sft-ar "$R/refit_ar/final" --data "$R/teach/eval.parquet" \
  --train-data "$R/teach/ar_sft.parquet" --lookup-data "$A" --rows 128 --max-new-tokens 144 --out "$R/card_refit.json"
# 5. Stage-2 AV-SFT: 150 more steps on the topic chats, the other languages and av_sft (10,555 rows). This run
#    read offline-v4 text (the intents name no topic; 3-5% of rows differ from the v3 text of steps 2-4, which
#    this script, run with today's code, also writes in v4)
[ -d "$R/av_sft2/final" ] || $T2 nla train av --init "$R/av_sft/final" \
  --data "$R/teach/topics_av_sft.parquet,$R/teach/locale_av_sft.parquet,$R/teach/av_sft.parquet" \
  --eval-data "$R/teach/eval.parquet" --out-dir "$R/av_sft2" --max-steps 150 --batch-size 16 --lr 2e-4 \
  --warmup-steps 10 --max-response-tokens 128 --eval-every 0 --eval-rows 96 --save-every 25 --seed 1
# 6. The AR refit on its text: 1,024 greedy and 1,024 sampled (T 0.7) explanations of ar_sft rows, plus the 512
#    of step 4; export (the LoRA adapters are copied: no SVD step)
[ -f "$R/av2_greedy.parquet" ] || $T1 nla verbalize --av "$R/av_sft2/final" --data "$A" --split ar_sft --limit 1024 \
  --max-new-tokens 144 --out "$R/av2_greedy.parquet" &
[ -f "$R/av2_s07.parquet" ] || $T1 nla verbalize --av "$R/av_sft2/final" --data "$A" --split ar_sft --limit 1024 \
  --max-new-tokens 144 --do-sample --temperature 0.7 --seed 11 --out "$R/av2_s07.parquet"
wait
[ -d "$R/refit2/final" ] || $T2 nla train ar --init "$R/refit_ar/final" \
  --data "$R/av2_greedy.parquet,$R/av2_s07.parquet,$R/av_text.parquet" --eval-data "$R/teach/eval.parquet" \
  --baseline-data "$R/teach/ar_sft.parquet" --out-dir "$R/refit2" --max-steps 200 --batch-size 16 --lr 1e-4 \
  --warmup-steps 10 --save-adapter-only --eval-every 0 --save-every 25 --eval-max-rows 512
[ -d "$R/ship/av" ] || nla export --av "$R/av_sft2/final" --ar "$R/refit2/final" --out "$R/ship"
# 7. The card (the round-3 card's rows kept: --earlier checks they are the same held-out rows) and the full
#    faithfulness report, side by side on one thread each
$T1 nla eval --sft-ar "$R/ar_rich2/final" --stage "round4=$R/ship/av,$R/ship/ar" --best-of 4 --earlier "$RUN/round3/card.json" \
  --data "$R/teach/eval.parquet" --train-data "$R/teach/ar_sft.parquet" --lookup-data "$A" --rows 128 \
  --max-new-tokens 176 --examples 6 --out "$R/card.json" &
$T1 nla faithfulness --av "$R/ship/av" --ar "$R/ship/ar" --data "$R/teach/eval.parquet" \
  --train-data "$R/teach/ar_sft.parquet" --lookup-data "$A" --out "$R/faithfulness"
wait
echo "round 4: $R/ship/{av,ar}, $R/card.json, $R/faithfulness/ (docs/results.md §12)"
