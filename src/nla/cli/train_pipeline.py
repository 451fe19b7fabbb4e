"""``nla train pipeline``: extract -> teach -> AR-SFT -> AV-SFT -> RL -> eval, resumable at every stage.

    nla train pipeline --preset cpu-smollm2 --run-dir runs/smollm2          # the embedded SmolLM2 on CPU
    nla train pipeline --preset gpu --model Qwen/Qwen2.5-1.5B-Instruct --run-dir runs/qwen
    nla train pipeline --preset cpu-smollm2 --run-dir runs/smollm2 --stop-after teach
    nla train pipeline --preset cpu-smollm2 --run-dir runs/smollm2 --from rl --rl-steps 100

Options: defaults < --preset < --config YAML < flags. Re-running skips finished stages (<run>/<stage>/DONE)
and resumes the interrupted one; --from STAGE clears STAGE and the later stages and redoes them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from nla.common.config import add_config_args


def register(sub: argparse._SubParsersAction) -> None:
    from nla.pipeline import STAGES, PipelineConfig

    p = sub.add_parser(
        "pipeline",
        help="Run the whole recipe (extract, teach, AR-SFT, AV-SFT, RL, eval) from a preset; resumable.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", default=None, help="Bundled preset (cpu-smollm2, gpu) or a YAML file.")
    p.add_argument("--from", dest="start", choices=STAGES, default=None, help="Redo this stage and every later one.")
    p.add_argument("--stop-after", choices=STAGES, default=None, help="Stop after this stage.")
    add_config_args(p, PipelineConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nla.pipeline import PipelineConfig, load_pipeline_config, run_pipeline

    names = {f.name for f in dataclasses.fields(PipelineConfig)}
    overrides = {k: v for k, v in vars(args).items() if k in names}
    cfg = load_pipeline_config(args.preset, args.config, **overrides)
    res = run_pipeline(cfg, start=args.start, stop_after=args.stop_after)
    summary = {
        "run_dir": str(res.run_dir),
        "stages": res.stages,
        "ladder": res.card.get("ladder") if res.card else None,
    }
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 0
