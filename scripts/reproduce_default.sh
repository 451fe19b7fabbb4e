#!/usr/bin/env bash
# Reproduce the NLA shipped in src/nla/resources/default_nla from scratch, on the embedded SmolLM2-135M (L=20).
#
#   bash scripts/reproduce_default.sh [RUN_DIR]        # default runs/nla; every step resumes after a kill
#
# Round 1 is the pipeline (extract, full-style offline teacher, AR-SFT, AV-SFT, RL, rank-16 export,
# distil + refit). Round 2 continues its two LoRA adapters on the compact teacher style, whose first line
# is what an activation at layer 20 states most reliably (the final token and the model's next-token
# predictions), then refits the AR on what the new AV writes. Round 3 gives the AV one more epoch of that
# style and refits the AR on greedy and sampled explanations of both AVs; `nla explain` then decodes
# best-of-4 (nla.rerank). Round 4 (scripts/round4.sh) continues both LoRA adapters on the rich teacher style
# (topic, language and setting lines); round 6 (scripts/round6.sh) continues them on that style
# without its `Before it:` quote; round 7 (scripts/round7.sh) continues those on four supplementary corpora;
# round 8 (scripts/round8.sh) trains round 7's AR on far more of its AV's own text, round 9
# (scripts/round9.sh) on that text of every ar_sft row, 1,200 steps longer, and round 10 (scripts/round10.sh,
# what ships) 2,400 steps more on the same data. Timings: docs/results.md §8-12, §15-19.
set -euo pipefail
RUN=${1:-runs/nla}
C=$RUN/compact
T1="OMP_NUM_THREADS=1"

nla train pipeline --preset cpu-smollm2 --run-dir "$RUN" --stop-after ship

for split in eval ar_sft av_sft; do
  nla teach --data "$RUN/extract/acts" --split "$split" --teacher offline --style compact --tail-tokens 6 --top-k 3 \
    --out "$C/teach/$split.parquet"
done
# AR-SFT (two runs: 150 steps at lr 3e-4, then 250 more at 2e-4) beside AV-SFT, one thread each
(
  env $T1 nla train ar --init "$RUN/ship/nla/ar" --data "$C/teach/ar_sft.parquet" --eval-data "$C/teach/eval.parquet" \
    --out-dir "$C/ar_sft1" --max-steps 150 --batch-size 16 --lr 3e-4 --warmup-steps 10 --save-adapter-only \
    --eval-every 0 --save-every 25 --eval-max-rows 512
  env $T1 nla train ar --init "$C/ar_sft1/final" --data "$C/teach/ar_sft.parquet" --eval-data "$C/teach/eval.parquet" \
    --out-dir "$C/ar_sft" --max-steps 250 --batch-size 16 --lr 2e-4 --warmup-steps 10 --save-adapter-only \
    --eval-every 0 --save-every 25 --eval-max-rows 512
) &
env $T1 nla train av --init "$RUN/ship/nla/av" --data "$C/teach/av_sft.parquet" --eval-data "$C/teach/eval.parquet" \
  --out-dir "$C/av_sft" --max-steps 300 --batch-size 16 --lr 3e-4 --warmup-steps 15 --max-response-tokens 96 \
  --eval-every 0 --eval-rows 96 --save-every 25
wait
# the AR learns to read what this AV actually writes (B stays that of the whole ar_sft split)
nla verbalize --av "$C/av_sft/final" --data "$RUN/extract/acts" --split ar_sft --limit 1024 --max-new-tokens 96 \
  --out "$C/av_text.parquet"
nla train ar --init "$C/ar_sft/final" --data "$C/av_text.parquet" --eval-data "$C/teach/eval.parquet" \
  --baseline-data "$C/teach/ar_sft.parquet" --out-dir "$C/refit_ar" --max-steps 200 --batch-size 16 --lr 1e-4 \
  --warmup-steps 10 --save-adapter-only --eval-every 0 --save-every 25 --eval-max-rows 512
nla export --av "$C/av_sft/final" --ar "$C/refit_ar/final" --out "$C/ship"

# Round 3: a second AV-SFT epoch (other data order) beside sampled explanations of the round-2 AV
R=$RUN/round3
env $T1 nla train av --init "$C/av_sft/final" --data "$C/teach/av_sft.parquet" --eval-data "$C/teach/eval.parquet" \
  --out-dir "$R/av_sft" --max-steps 200 --batch-size 16 --lr 1.5e-4 --warmup-steps 10 --max-response-tokens 96 \
  --eval-every 0 --eval-rows 96 --save-every 25 --seed 1 &
env $T1 nla verbalize --av "$C/av_sft/final" --data "$RUN/extract/acts" --split av_sft --limit 1024 \
  --max-new-tokens 96 --do-sample --temperature 0.7 --seed 7 --out "$R/av2_s07.parquet"
wait
env $T1 nla verbalize --av "$R/av_sft/final" --data "$RUN/extract/acts" --split ar_sft --limit 1024 \
  --max-new-tokens 96 --out "$R/av3_greedy.parquet" &
env $T1 nla verbalize --av "$R/av_sft/final" --data "$RUN/extract/acts" --split ar_sft --limit 1024 \
  --max-new-tokens 96 --do-sample --temperature 0.7 --seed 11 --out "$R/av3_s07.parquet"
wait
nla train ar --init "$C/refit_ar/final" \
  --data "$R/av3_greedy.parquet,$R/av3_s07.parquet,$R/av2_s07.parquet,$C/av_text.parquet" \
  --eval-data "$C/teach/eval.parquet" --baseline-data "$C/teach/ar_sft.parquet" --out-dir "$R/refit_ar" \
  --max-steps 300 --batch-size 16 --lr 1e-4 --warmup-steps 10 --save-adapter-only --eval-every 0 --save-every 25 \
  --eval-max-rows 512
nla export --av "$R/av_sft/final" --ar "$R/refit_ar/final" --out "$R/ship"
nla eval --sft-av "$R/av_sft/final" --sft-ar "$C/ar_sft/final" \
  --stage "v1-rl=$RUN/rl/final/av,$RUN/rl/final/ar" "v1-shipped=$RUN/ship/nla/av,$RUN/ship/nla/ar" \
          "v2-shipped=$C/ship/av,$C/ship/ar" "shipped=$R/ship/av,$R/ship/ar" --best-of 4 \
  --data "$C/teach/eval.parquet" --train-data "$C/teach/ar_sft.parquet" --rows 128 --max-new-tokens 176 \
  --examples 6 --out "$R/card.json"

# Round 4: the rich teacher style, AV-SFT and an AR from the round-3 adapters, the card with the round-3 NLA's
# rows beside it, and the faithfulness report (docs/results.md §12)
bash "$(dirname "$0")/round4.sh" "$RUN"
# Round 6: the rich style without the invented quote, AV-SFT on all of av_sft and rl, an AR refit, the card
# with the round-4 NLA's rows beside it, both faithfulness reports (docs/results.md §15)
bash "$(dirname "$0")/round6.sh" "$RUN"
# Round 7: round 6 continued on other languages, topic chats, their answers as prose and plain narrative chats,
# an AR refit, the card with the rows of rounds 6 and 4, the faithfulness report (§16)
bash "$(dirname "$0")/round7.sh" "$RUN"
# Round 8: the round-7 AV, its AR trained on the AV's text of 3,830 ar_sft rows; the card with the rows of
# rounds 7, 6 and 4, the faithfulness report greedy and best-of-4 (§17)
bash "$(dirname "$0")/round8.sh" "$RUN"
# Round 9: round 8's AR, 3 x 400 more steps on the AV's greedy text of all 5,100 ar_sft rows; the card with the
# rows of rounds 8, 7, 6 and 4, both faithfulness reports (§18)
bash "$(dirname "$0")/round9.sh" "$RUN"
# Round 10 (what ships now): round 9's AR, 6 x 400 more steps on the same data (the last four at lr 2e-4); the
# card with the rows of rounds 9, 8, 7, 6 and 4, both faithfulness reports (§19)
bash "$(dirname "$0")/round10.sh" "$RUN"
echo "done: $RUN/round10/ship/{av,ar} and $RUN/round10/card.json (copy into src/nla/resources/default_nla to ship)"
