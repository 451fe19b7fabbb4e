#!/usr/bin/env bash
# Round 10 of the default NLA (issue 13; docs/results.md §19): round 9 continued. The AV is still round 7's and
# nothing new is generated: round 9's AR trains six more stages of 400 steps on the same data as round 9 (the
# AV's greedy text of all 5,100 ar_sft rows and its sampled text of 1,408, both twice, beside the teacher text),
# the first two at lr 1e-4 as before, the rest at lr 2e-4. Then the card (keeping the rows of rounds 9, 8, 7, 6
# and 4) and the two faithfulness reports. Resumable like round9.sh, whose run it continues.
#
#   bash scripts/round10.sh [RUN_DIR]        # default runs/nla
set -euo pipefail
RUN=${1:-runs/nla}
R6=$RUN/round6
R7=$RUN/round7
R8=$RUN/round8
R9=$RUN/round9
R=$RUN/round10
A=$RUN/extract/acts
HERE=$(dirname "$0")
mkdir -p "$R"
ar() {  # OUT INIT SEED LR: 400 steps x 16, two threads
  [ -d "$R/$1/final" ] || env OMP_NUM_THREADS=2 nla train ar --init "$2" --data "$DATA" \
    --eval-data "$R6/teach/eval.parquet" --baseline-data "$A" --out-dir "$R/$1" --max-steps 400 --batch-size 16 \
    --lr "$4" --warmup-steps 10 --save-adapter-only --eval-every 0 --save-every 25 --eval-max-rows 512 --seed "$3"
}
TEACH="$R6/teach/ar_sft.parquet,$R7/teach/locale_ar_sft.parquet,$R7/teach/scenes_ar_sft.parquet,$R7/teach/topic_prose_ar_sft.parquet"
G="$R7/av_greedy.parquet,$R8/av_greedy_2048.parquet,$R8/av_greedy_3574.parquet,$R8/av_greedy_odd.parquet"
G="$G,$R9/av_greedy_4k2.parquet,$R9/av_greedy_1793.parquet,$R9/av_greedy_3841.parquet"
S="$R7/av_s07.parquet,$R8/av_s07_odd.parquet"
DATA="$G,$G,$S,$S,$TEACH"

# 1. AR stages 7 and 8 at lr 1e-4 (round 9's recipe), then stages at lr 2e-4
ar ar7 "$R9/ar6/final" 12 1e-4
ar ar8 "$R/ar7/final" 13 1e-4
ar ar9 "$R/ar8/final" 14 2e-4
ar ar10 "$R/ar9/final" 15 2e-4
ar ar11 "$R/ar10/final" 16 2e-4
ar ar12 "$R/ar11/final" 17 2e-4
LAST=ar12
[ -d "$R/ship/av" ] || nla export --av "$R7/av_sft/final" --ar "$R/$LAST/final" --out "$R/ship"

# 2. The card, the faithfulness report, and the report again with best-of-4 decoding (what `nla explain` prints)
bash "$HERE/card_and_report.sh" "$R" "$R/$LAST/final" "round9=$R9/card.json" "$R6/teach/eval.parquet" "$A"
[ -f "$R/faithfulness_best4/report.json" ] || env OMP_NUM_THREADS=2 nla faithfulness --av "$R/ship/av" \
  --ar "$R/ship/ar" --best-of 4 --data "$R6/teach/eval.parquet" --train-data "$A" --lookup-data "$A" \
  --out "$R/faithfulness_best4"
echo "round 10: $R/ship/{av,ar}, $R/card.json, $R/faithfulness/, $R/faithfulness_best4/ (docs/results.md §19)"
