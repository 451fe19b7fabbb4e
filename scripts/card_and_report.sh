#!/usr/bin/env bash
# The last step of every round script (round4.sh, round5.sh): the card of $ROUND/ship beside an earlier card whose
# rows it keeps, and the full faithfulness report, one thread each, side by side; both skipped when present.
#
#   bash scripts/card_and_report.sh ROUND READER_AR EARLIER EVAL_DATA ACTS
#
# READER_AR is the card's --sft-ar (teacher-text row and second reader); EARLIER is --earlier ([LABEL=]card.json);
# EVAL_DATA the teacher eval parquet; ACTS the extraction (B and the token-lookup tables). A hand-written
# $ROUND/compute.yaml, when present, goes onto the card.
set -euo pipefail
R=$1 READER=$2 EARLIER=$3 EVAL=$4 A=$5
COMPUTE=(); [ -f "$R/compute.yaml" ] && COMPUTE=(--compute "$R/compute.yaml")
[ -f "$R/card.json" ] || env OMP_NUM_THREADS=1 nla eval --sft-ar "$READER" --stage "shipped=$R/ship/av,$R/ship/ar" \
  --best-of 4 --earlier "$EARLIER" "${COMPUTE[@]}" --data "$EVAL" --train-data "$A" --lookup-data "$A" --rows 128 \
  --max-new-tokens 176 --examples 6 --out "$R/card.json" &
CARD=$!
[ -f "$R/faithfulness/report.json" ] || env OMP_NUM_THREADS=1 nla faithfulness --av "$R/ship/av" --ar "$R/ship/ar" \
  --data "$EVAL" --train-data "$A" --lookup-data "$A" --out "$R/faithfulness"
wait "$CARD"  # a card that failed (e.g. --earlier from other rows) fails the script
