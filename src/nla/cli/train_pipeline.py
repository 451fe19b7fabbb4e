"""``nla train pipeline``: the whole recipe, from a preset, resumable at every stage.

    nla train pipeline --preset smollm2 --run-dir runs/nla            # the shipped NLA, on a 2-core CPU
    nla train pipeline --preset smollm2 --model Qwen/Qwen2.5-0.5B-Instruct --run-dir runs/qwen    # your model
    nla train pipeline --preset gpu --model Qwen/Qwen2.5-1.5B-Instruct --run-dir runs/qwen
    nla train pipeline --preset smollm2 --run-dir runs/nla --stop-after teach
    nla train pipeline --preset smollm2 --run-dir runs/nla --from selftext --selftext.schedule 4x400@2e-4

Stages (each writes <run>/<stage>/ and a DONE marker):
{stages}

Options: defaults < --preset < --config YAML < flags, merged key by key. A few options are shared by the stages
(--run-dir, --model, --layer, --seed, --bf16, --save-every, --keep-last, --threads, --held-out-rows, --teach-rows);
every other option belongs to one stage and is spelled --<stage>.<option> (--ar-sft.max-steps 300,
--selftext.ar.batch-size 8), in YAML a mapping per stage (rl: {{kl_coef: 0.02}}). Data mixes are mappings of
source: weight (YAML) or SOURCE=WEIGHT,... (flags: --mix.ar-sft ar_sft=1,locale/ar_sft=1). The paths that
connect the stages are the pipeline's. Re-running skips finished stages and resumes the interrupted one;
--from STAGE clears STAGE and the later stages and redoes them. See docs/pipeline.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from nla.common.config import add_config_args, flag_values


def register(sub: argparse._SubParsersAction) -> None:
    from nla.pipeline import STAGE_HELP, STAGES, PipelineConfig

    stages = "\n".join(f"  {name:<13} {STAGE_HELP[name]}" for name in STAGES)
    p = sub.add_parser(
        "pipeline",
        help="Run the whole recipe (corpora ... selftext, card, faithfulness, ship) from a preset; resumable.",
        description=__doc__.format(stages=stages),
        usage="nla train pipeline [--preset P] [--config YAML] [--from STAGE] [--stop-after STAGE] [--OPTION V ...]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", default=None, help="A bundled preset (smollm2, gemma3-270m, gpu, tiny) or a YAML file.")
    p.add_argument("--from", dest="start", choices=STAGES, default=None, help="Redo this stage and every later one.")
    p.add_argument("--stop-after", choices=STAGES, default=None, help="Stop after this stage.")
    add_config_args(p, PipelineConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nla.pipeline import PipelineConfig, load_pipeline_config, run_pipeline

    cfg = load_pipeline_config(args.preset, args.config, **flag_values(PipelineConfig, args))
    typed = sys.argv[1:3] == ["train", "pipeline"]  # else called as main(argv): the run's pipeline.yaml stands in
    command = "nla " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if typed else ""
    res = run_pipeline(cfg, start=args.start, stop_after=args.stop_after, command=command)
    summary = {
        "run_dir": str(res.run_dir),
        "stages": res.stages,
        "ladder": res.card.get("ladder") if res.card else None,
    }
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 0
