"""``nla train pipeline``: extract -> teach -> AR-SFT -> AV-SFT -> RL -> eval, resumable at every stage.

    nla train pipeline --preset cpu-smollm2 --run-dir runs/smollm2          # the embedded SmolLM2 on CPU
    nla train pipeline --preset gpu --model Qwen/Qwen2.5-1.5B-Instruct --run-dir runs/qwen
    nla train pipeline --preset cpu-smollm2 --run-dir runs/smollm2 --stop-after teach
    nla train pipeline --preset cpu-smollm2 --run-dir runs/smollm2 --from rl --rl.steps 100 --rl.kl-coef 0.02

Options: defaults < --preset < --config YAML < flags, merged key by key. A few options are shared by the
stages (--run-dir, --model, --layer, --seed, --bf16, --save-every, --held-out-rows); every other option
belongs to one stage and is spelled --<stage>.<option> (--ar-sft.max-steps 300, --refit.distill.lr 1e-4),
in YAML a mapping per stage (rl: {kl_coef: 0.02}). The paths that connect the stages are the pipeline's.
Re-running skips finished stages (<run>/<stage>/DONE) and resumes the interrupted one; --from STAGE clears
STAGE and the later stages and redoes them. See docs/pipeline.md.
"""

from __future__ import annotations

import argparse
import json
import sys

from nla.common.config import add_config_args, flag_values


def register(sub: argparse._SubParsersAction) -> None:
    from nla.pipeline import STAGES, PipelineConfig

    p = sub.add_parser(
        "pipeline",
        help="Run the whole recipe (extract, teach, AR-SFT, AV-SFT, RL, eval) from a preset; resumable.",
        description=__doc__,
        usage="nla train pipeline [--preset P] [--config YAML] [--from STAGE] [--stop-after STAGE] [--OPTION V ...]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", default=None, help="Bundled preset (cpu-smollm2, gpu) or a YAML file.")
    p.add_argument("--from", dest="start", choices=STAGES, default=None, help="Redo this stage and every later one.")
    p.add_argument("--stop-after", choices=STAGES, default=None, help="Stop after this stage.")
    add_config_args(p, PipelineConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nla.pipeline import PipelineConfig, load_pipeline_config, run_pipeline

    cfg = load_pipeline_config(args.preset, args.config, **flag_values(PipelineConfig, args))
    res = run_pipeline(cfg, start=args.start, stop_after=args.stop_after)
    summary = {
        "run_dir": str(res.run_dir),
        "stages": res.stages,
        "ladder": res.card.get("ladder") if res.card else None,
    }
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 0
