#!/usr/bin/env bash
# Round 9 of the default NLA (issue 13; docs/results.md §18): round 8 continued. The AV is still round 7's; it
# writes greedy text for the last 1,270 ar_sft rows it had not explained (so every ar_sft row now has its AV's
# greedy text), and round 8's AR continues for three more stages of 400 steps on all of it. Then the card (keeping
# the rows of rounds 8, 7, 6 and 4) and the two faithfulness reports. Resumable like round8.sh, whose run it
# continues (RUN_DIR/round8: av_*.parquet, ar3/final; RUN_DIR/round7: av_sft/final, av_greedy, av_s07, teach/).
#
#   bash scripts/round9.sh [RUN_DIR]        # default runs/nla
set -euo pipefail
RUN=${1:-runs/nla}
R6=$RUN/round6
R7=$RUN/round7
R8=$RUN/round8
R=$RUN/round9
A=$RUN/extract/acts
HERE=$(dirname "$0")
mkdir -p "$R"
verbalize() {  # NAME OFFSET EVERY LIMIT: greedy text of every EVERY-th ar_sft row from OFFSET on, one thread
  [ -f "$R/$1.parquet" ] || env OMP_NUM_THREADS=1 nla verbalize --av "$R7/av_sft/final" --data "$A" --split ar_sft \
    --offset "$2" --every "$3" --limit "$4" --max-new-tokens 144 --chunk-size 32 --out "$R/$1.parquet"
}
ar() {  # OUT INIT DATA SEED: 400 steps x 16 at lr 1e-4, two threads
  [ -d "$R/$1/final" ] || env OMP_NUM_THREADS=2 nla train ar --init "$2" --data "$3" \
    --eval-data "$R6/teach/eval.parquet" --baseline-data "$A" --out-dir "$R/$1" --max-steps 400 --batch-size 16 \
    --lr 1e-4 --warmup-steps 10 --save-adapter-only --eval-every 0 --save-every 25 --eval-max-rows 512 --seed "$4"
}
TEACH="$R6/teach/ar_sft.parquet,$R7/teach/locale_ar_sft.parquet,$R7/teach/scenes_ar_sft.parquet,$R7/teach/topic_prose_ar_sft.parquet"

# 1. Greedy text of the rows left: 2, 6, ..., 2046 and 1793-2047 in one job; 3841-5099 (odd) beside it
( verbalize av_greedy_4k2 2 4 512 && verbalize av_greedy_1793 1793 2 128 ) &
FIRST=$!
verbalize av_greedy_3841 3841 2 630
wait "$FIRST"

# 2. AR stages 4, 5 and 6: round 8's AR on the greedy text of all 5,100 ar_sft rows and round 7/8's sampled text
#    (both twice), beside the same teacher text
G="$R7/av_greedy.parquet,$R8/av_greedy_2048.parquet,$R8/av_greedy_3574.parquet,$R8/av_greedy_odd.parquet"
G="$G,$R/av_greedy_4k2.parquet,$R/av_greedy_1793.parquet,$R/av_greedy_3841.parquet"
S="$R7/av_s07.parquet,$R8/av_s07_odd.parquet"
ar ar4 "$R8/ar3/final" "$G,$G,$S,$S,$TEACH" 9
ar ar5 "$R/ar4/final" "$G,$G,$S,$S,$TEACH" 10
ar ar6 "$R/ar5/final" "$G,$G,$S,$S,$TEACH" 11
[ -d "$R/ship/av" ] || nla export --av "$R7/av_sft/final" --ar "$R/ar6/final" --out "$R/ship"

# 3. The card, the faithfulness report, and the report again with best-of-4 decoding (what `nla explain` prints)
bash "$HERE/card_and_report.sh" "$R" "$R/ar6/final" "round8=$R8/card.json" "$R6/teach/eval.parquet" "$A"
[ -f "$R/faithfulness_best4/report.json" ] || env OMP_NUM_THREADS=2 nla faithfulness --av "$R/ship/av" \
  --ar "$R/ship/ar" --best-of 4 --data "$R6/teach/eval.parquet" --train-data "$A" --lookup-data "$A" \
  --out "$R/faithfulness_best4"
echo "round 9: $R/ship/{av,ar}, $R/card.json, $R/faithfulness/, $R/faithfulness_best4/ (docs/results.md §18)"
