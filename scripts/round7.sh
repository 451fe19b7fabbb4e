#!/usr/bin/env bash
# Round 7 of the default NLA (issue 13; docs/results.md §16): round 6 with the genres it lacked. Round 6 trained
# on the default corpus alone (English chats with a clear subject, and software documentation); it named a
# planted French or German direction far less often than round 4, which had seen passages in six other
# languages, and it gave 3 of 20 plain narrative sentences a topic. Round 7 builds four supplementary corpora
# (passages in other languages; topic-balanced chats; their answers as plain prose; chats that ask for plain
# narrative about ordinary places and moments, scripts/scene_prompts.yaml), explains them with round 6's
# teacher, continues the round-6 AV on them beside the default av_sft rows, refits the round-6 AR on the new
# AV's text, then writes the card (keeping the rows of rounds 6 and 4) and the faithfulness report. Resumable
# like round6.sh, whose run it continues (RUN_DIR/round6: teach/, av_sft/final, ar/final, card.json).
#
#   bash scripts/round7.sh [RUN_DIR]        # default runs/nla
set -euo pipefail
RUN=${1:-runs/nla}
R6=$RUN/round6
R=$RUN/round7
A=$RUN/extract/acts
T1="env OMP_NUM_THREADS=1"
T2="env OMP_NUM_THREADS=2"
HERE=$(dirname "$0")
mkdir -p "$R/teach"
extract() {  # NAME: training rows only (half av_sft, half ar_sft; no eval rows)
  [ -d "$R/${1}_acts" ] || $T1 nla extract --model smollm2-135m --corpus "$R/$1.jsonl" --out "$R/${1}_acts" --layer 20 \
    --positions-per-doc 10 --skip 50 --max-tokens 512 --split-fractions 0.5 0.5 0 0
}
teach() {  # NAME SPLIT [LIMIT]
  [ -f "$R/teach/${1}_$2.parquet" ] || $T1 nla teach --data "$R/${1}_acts" --split "$2" --limit "${3:-0}" \
    --teacher offline --style rich --tail-tokens 0 --top-k 3 --out "$R/teach/${1}_$2.parquet"
}

# 1. The corpora (one thread each, two at a time), their activations and the round-6 teacher's text; the topic chats'
#    answers also as plain prose (without it the AV learned that English prose not about software has no topic)
if [ ! -d "$R/av_sft/final" ]; then
  [ -f "$R/locale.jsonl" ] || python "$HERE/locale_corpus.py" --out "$R/locale.jsonl"
  [ -f "$R/topics.jsonl" ] || $T1 nla corpus build --prompts "$HERE/topic_prompts.yaml" --n-chat 900 --n-web 0 \
    --out "$R/topics.jsonl" &
  TOPICS=$!
  [ -f "$R/scenes.jsonl" ] || $T1 nla corpus build --prompts "$HERE/scene_prompts.yaml" --n-chat 380 --n-web 0 \
    --max-new-tokens 128 --out "$R/scenes.jsonl"
  ( extract scenes; teach scenes av_sft; teach scenes ar_sft ) &
  SCENES=$!
  extract locale; teach locale av_sft; teach locale ar_sft 600
  wait "$TOPICS"
  extract topics; teach topics av_sft 1500
  [ -f "$R/topic_prose.jsonl" ] || python "$HERE/chat_answers.py" "$R/topics.jsonl" --out "$R/topic_prose.jsonl"
  extract topic_prose; teach topic_prose av_sft 1500; teach topic_prose ar_sft 600
  wait "$SCENES"
fi

# 2. The AV: the round-6 adapter, 150 steps x 16 on the default av_sft rows and the four corpora (~11,300 rows)
[ -d "$R/av_sft/final" ] || $T2 nla train av --init "$R6/av_sft/final" \
  --data "$R6/teach/av_sft.parquet,$R/teach/locale_av_sft.parquet,$R/teach/topics_av_sft.parquet,$R/teach/scenes_av_sft.parquet,$R/teach/topic_prose_av_sft.parquet" \
  --eval-data "$R6/teach/eval.parquet" --out-dir "$R/av_sft" --max-steps 150 --batch-size 16 --lr 2e-4 \
  --warmup-steps 10 --max-response-tokens 128 --eval-every 0 --eval-rows 96 --save-every 10 --seed 7

# 3. What it writes for 512 ar_sft rows spread over the split, greedy and sampled at T 0.7 (as in round 6)
AVW="--av $R/av_sft/final --data $A --split ar_sft --every 4 --limit 512 --max-new-tokens 144 --chunk-size 32"
[ -f "$R/av_greedy.parquet" ] || $T1 nla verbalize $AVW --out "$R/av_greedy.parquet" &
GREEDY=$!
[ -f "$R/av_s07.parquet" ] || $T1 nla verbalize $AVW --do-sample --temperature 0.7 --seed 13 --out "$R/av_s07.parquet"
wait "$GREEDY"

# 4. The AR: the round-6 adapter and head, on the new AV's text (twice), the teacher's text of the default
#    ar_sft rows and of the other-language, narrative and topic-prose ar_sft rows
AVT="$R/av_greedy.parquet,$R/av_s07.parquet"
[ -d "$R/ar/final" ] || $T2 nla train ar --init "$R6/ar/final" \
  --data "$AVT,$AVT,$R6/teach/ar_sft.parquet,$R/teach/locale_ar_sft.parquet,$R/teach/scenes_ar_sft.parquet,$R/teach/topic_prose_ar_sft.parquet" \
  --eval-data "$R6/teach/eval.parquet" --baseline-data "$A" --out-dir "$R/ar" --max-steps 150 --batch-size 16 \
  --lr 1e-4 --warmup-steps 10 --save-adapter-only --eval-every 0 --save-every 25 --eval-max-rows 512 --seed 7
[ -d "$R/ship/av" ] || nla export --av "$R/av_sft/final" --ar "$R/ar/final" --out "$R/ship"

# 5. The card (it keeps the rows of round 6 and, through it, round 4) and the faithfulness report
bash "$HERE/card_and_report.sh" "$R" "$R/ar/final" "round6=$R6/card.json" "$R6/teach/eval.parquet" "$A"
echo "round 7: $R/ship/{av,ar}, $R/card.json, $R/faithfulness/ (docs/results.md §16)"
