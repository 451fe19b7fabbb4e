#!/usr/bin/env bash
# Round 5 of the default NLA (issue 13; docs/results.md §14): expert iteration from the round-4 pair. The
# round-4 AV writes 4 answers per activation of the rl split (greedy + 3 samples at T 0.7), the round-4 AR keeps
# the one it reconstructs best (`nla verbalize --best-of 4`), and the AV's LoRA adapter is fine-tuned one pass
# on the kept answers; the AR stays round 4's. Then the card (keeping the round-4 rows) and the faithfulness
# report. It starts from the run directory of scripts/round4.sh and is resumable like it.
#
#   bash scripts/round5.sh [RUN_DIR]        # default runs/nla
#
# Sized for one 3-hour session on 2 cores: about 60 min of verbalize (two 1-thread jobs), 20 min of AV-SFT,
# 20 min of card and faithfulness report side by side.
set -euo pipefail
RUN=${1:-runs/nla}
R4=$RUN/round4
R=$RUN/round5
A=$RUN/extract/acts
T1="env OMP_NUM_THREADS=1"
T2="env OMP_NUM_THREADS=2"
mkdir -p "$R"
best4() {  # NAME OFFSET LIMIT: the rl split starts with 3,870 chat rows, then prose
  [ -f "$R/best4_$1.parquet" ] || $T1 nla verbalize --av "$R4/av_sft/final" --ar "$R4/ar/final" --best-of 4 \
    --temperature 0.7 --data "$A" --split rl --offset "$2" --limit "$3" --max-new-tokens 144 --chunk-size 32 \
    --batch-size 16 --seed 5 --out "$R/best4_$1.parquet"
}

# 1. Best of 4 on 512 chat and 544 prose rows of the rl split (the sidecars hold the chosen and greedy mse): the
#    rows of the measured run, 10 positions of each of 107 documents; a next attempt should spread them (--every 8)
best4 chat 0 512 &
best4 web 3870 544
wait

# 2. The AV: its round-4 adapter, one pass over the 1,056 kept answers
[ -d "$R/av_ei/final" ] || $T2 nla train av --init "$R4/av_sft/final" \
  --data "$R/best4_chat.parquet,$R/best4_web.parquet" --eval-data "$R4/teach/eval.parquet" --out-dir "$R/av_ei" \
  --max-steps 66 --batch-size 16 --lr 2e-4 --warmup-steps 5 --max-response-tokens 160 --eval-every 0 \
  --eval-rows 96 --save-every 10
[ -d "$R/ship/av" ] || nla export --av "$R/av_ei/final" --ar "$R4/ar/final" --out "$R/ship"

# 3. The card (beside the round-4 one, whose rows it keeps) and the faithfulness report
bash "$(dirname "$0")/card_and_report.sh" "$R" "$R4/ar/final" "round4=$R4/card.json" "$R4/teach/eval.parquet" "$A"
echo "round 5: $R/ship/{av,ar}, $R/card.json, $R/faithfulness/ (docs/results.md §14)"
