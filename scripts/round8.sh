#!/usr/bin/env bash
# Round 8 of the default NLA (issue 13; docs/results.md §17): the round-7 AV unchanged, its AR trained on far
# more of what that AV writes. Round 7's AR refit saw the AV's text of 512 ar_sft rows (greedy and sampled);
# here the AV explains 2,422 more ar_sft rows greedily and 896 at T 0.7 (rows it never trained on: it trained
# on av_sft and rl), and the AR continues in three stages of 300 steps, each on the AV's greedy and sampled text
# (twice) beside the teacher's text of the ar_sft rows. Then the card (keeping the rows of rounds 7, 6 and 4), the faithfulness
# report, and the same report with best-of-4 decoding (what `nla explain` prints). Resumable like round7.sh,
# whose run it continues (RUN_DIR/round7: av_sft/final, ar/final, av_greedy/av_s07, teach/, card.json).
#
#   bash scripts/round8.sh [RUN_DIR]        # default runs/nla
set -euo pipefail
RUN=${1:-runs/nla}
R6=$RUN/round6
R7=$RUN/round7
R=$RUN/round8
A=$RUN/extract/acts
T1="env OMP_NUM_THREADS=1"
T2="env OMP_NUM_THREADS=2"
HERE=$(dirname "$0")
mkdir -p "$R"
verbalize() {  # NAME OFFSET LIMIT [OPTIONS]: every second ar_sft row from OFFSET on, one thread
  [ -f "$R/$1.parquet" ] || $T1 nla verbalize --av "$R7/av_sft/final" --data "$A" --split ar_sft --offset "$2" \
    --every 2 --limit "$3" --max-new-tokens 144 --chunk-size 32 "${@:4}" --out "$R/$1.parquet"
}
ar() {  # OUT INIT DATA SEED: 300 steps x 16 at lr 1e-4, two threads
  [ -d "$R/$1/final" ] || $T2 nla train ar --init "$2" --data "$3" --eval-data "$R6/teach/eval.parquet" \
    --baseline-data "$A" --out-dir "$R/$1" --max-steps 300 --batch-size 16 --lr 1e-4 --warmup-steps 10 \
    --save-adapter-only --eval-every 0 --save-every 25 --eval-max-rows 512 --seed "$4"
}
TEACH="$R6/teach/ar_sft.parquet,$R7/teach/locale_ar_sft.parquet,$R7/teach/scenes_ar_sft.parquet,$R7/teach/topic_prose_ar_sft.parquet"

# 1. Greedy text of the second half of ar_sft (rows 2048-5099, every second one), two jobs side by side
verbalize av_greedy_2048 2048 763 &
FIRST=$!
verbalize av_greedy_3574 3574 763
wait "$FIRST"

# 2. AR stage 1: round 7's AR on round 7's and these greedy texts, round 7's sampled text, the teacher's text
G1="$R/av_greedy_2048.parquet,$R/av_greedy_3574.parquet,$R7/av_greedy.parquet"
ar ar "$R7/ar/final" "$G1,$G1,$R7/av_s07.parquet,$R7/av_s07.parquet,$TEACH" 7

# 3. More text: greedy for rows 1-1791 (every second one), sampled at T 0.7 for rows 2049-3839
verbalize av_greedy_odd 1 896 &
ODD=$!
verbalize av_s07_odd 2049 896 --do-sample --temperature 0.7 --seed 17
wait "$ODD"

# 4. AR stages 2 and 3: stage 1 continued on all of it, twice 300 steps (another data order the second time)
G2="$G1,$R/av_greedy_odd.parquet"
S2="$R7/av_s07.parquet,$R/av_s07_odd.parquet"
ar ar2 "$R/ar/final" "$G2,$G2,$S2,$S2,$TEACH" 7
ar ar3 "$R/ar2/final" "$G2,$G2,$S2,$S2,$TEACH" 8
[ -d "$R/ship/av" ] || nla export --av "$R7/av_sft/final" --ar "$R/ar3/final" --out "$R/ship"

# 5. The card (it keeps the rows of round 7 and, through it, rounds 6 and 4), the faithfulness report, and the
#    report again with best-of-4 decoding
bash "$HERE/card_and_report.sh" "$R" "$R/ar3/final" "round7=$R7/card.json" "$R6/teach/eval.parquet" "$A"
[ -f "$R/faithfulness_best4/report.json" ] || $T2 nla faithfulness --av "$R/ship/av" --ar "$R/ship/ar" \
  --best-of 4 --data "$R6/teach/eval.parquet" --train-data "$A" --lookup-data "$A" --out "$R/faithfulness_best4"
echo "round 8: $R/ship/{av,ar}, $R/card.json, $R/faithfulness/, $R/faithfulness_best4/ (docs/results.md §17)"
