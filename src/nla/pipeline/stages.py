"""One method per stage of ``nla train pipeline``; each returns the JSON summary of its DONE marker.

Every stage reads what earlier stages wrote under the run directory and writes only under its own
``<run_dir>/<stage>/``; the library functions it calls (``extract``, ``teach``, ``train_ar``, ...) resume
internally, so a stage killed half-way continues where it stopped when the command is run again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from nla.common.config import fill_section
from nla.common.errors import NLAError
from nla.common.paths import atomic_dir, atomic_write_text, dir_size_mib
from nla.data.corpus import corpus_sha256, load_corpus
from nla.data.documents import write_jsonl
from nla.data.extract import extract
from nla.data.supplementary import PROSE_OF, build_supplementary
from nla.evaluate.card import evaluation_card, format_card
from nla.explain.trust import LOOKUP_FILE, build_token_lookup
from nla.export import drop_tokenizer_files, export_nla
from nla.faithfulness.suite import run_faithfulness
from nla.models.target import shipped_nla_folder
from nla.pipeline.config import GENERATED, PipelineConfig, parse_mix, parse_schedule, source_kind
from nla.teach.run import teach
from nla.train.ar import train_ar
from nla.train.av import train_av
from nla.train.rl.trainer import train_rl
from nla.verbalize import verbalize

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = (
    "corpora", "extract", "teach", "ar_sft", "av_sft", "rl", "expert", "selftext", "card", "faithfulness", "ship",
)  # fmt: skip
STAGE_HELP = {
    "corpora": "freeze the main corpus and build the supplementary ones (corpora/*.jsonl, their sha256)",
    "extract": "activations at layer L: the main corpus split by document, each supplementary corpus",
    "teach": "teacher text of every source a mix names, and of held_out_rows eval rows",
    "ar_sft": "the AR trained on the teacher text of mix.ar_sft",
    "av_sft": "the AV trained on the teacher text of mix.av_sft",
    "rl": "joint GRPO of the AV and AR (off with --run-rl false)",
    "expert": "expert iteration: best-of-K answers chosen by the AR, the AV tuned on them (expert.rows > 0)",
    "selftext": "the AV explains ar_sft rows; the AR trains on that text once per selftext.schedule entry",
    "card": "the evaluation card of every stage's pair, with controls, the command and the code version",
    "faithfulness": "the faithfulness report(s) of the final pair",
    "ship": "ship/nla/{av,ar,card.json}: the compact NLA",
}
DONE = "DONE"


def _finished_rows(path: Path) -> int:
    """Rows of an ``nla verbalize`` parquet whose answer closed its tag within the token cap."""
    import pyarrow.parquet as pq

    cols = pq.read_table(path, columns=["tag_ok", "truncated"]).to_pydict()
    return sum(ok and not cut for ok, cut in zip(cols["tag_ok"], cols["truncated"], strict=True))


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Stages:
    """The stages of one run; ``command`` and ``code_version`` go onto the card."""

    def __init__(self, cfg: PipelineConfig, *, command: str = "", code_version: str = "") -> None:
        self.cfg = cfg
        self.run = Path(cfg.run_dir)
        self.command = command
        self.code_version = code_version

    # ------------------------------------------------------------------ paths
    def dir(self, stage: str) -> Path:
        return self.run / stage

    def done(self, stage: str) -> dict[str, Any] | None:
        marker = self.dir(stage) / DONE
        return json.loads(marker.read_text(encoding="utf-8")) if marker.exists() else None

    @property
    def acts(self) -> Path:
        return self.dir("extract") / "acts"

    @property
    def eval_data(self) -> Path:
        return self.dir("teach") / "eval.parquet"

    def corpora_built(self) -> list[str]:
        return self.cfg.corpora.wanted()

    def teach_out(self, source: str) -> Path:
        return self.dir("teach") / f"{source.replace('/', '_')}.parquet"

    def source_path(self, source: str) -> Path | None:
        """The parquet of a mix source, or None when its corpus is not part of this run."""
        kind = source_kind(source)
        if kind == "file":
            return Path(source)
        if kind == "generated":
            return self.dir(GENERATED[source]) / f"{source.split('/')[1]}.parquet"
        corpus = source.rpartition("/")[0]
        return None if corpus and corpus not in self.corpora_built() else self.teach_out(source)

    def mix(self, name: str) -> str:
        """The comma-separated data list of ``mix.<name>``, each source listed weight times."""
        parts: list[str] = []
        for source, weight in parse_mix(getattr(self.cfg.mix, name), f"mix.{name}").items():
            path = self.source_path(source)
            if path is None:
                log.info("mix.%s: %s left out (that corpus is not built in this run)", name, source)
                continue
            if not path.exists() and "empty" == (self.done("teach") or {}).get(source):
                log.info("mix.%s: %s left out (that split of the corpus has no rows)", name, source)
                continue
            if not path.exists():
                raise NLAError(f"mix.{name}: {source} has no data yet ({path})")
            parts += [str(path)] * weight
        if not parts:
            raise NLAError(f"mix.{name} names no data this run has")
        return ",".join(parts)

    def teacher_sources(self) -> list[str]:
        """Every teacher source a mix of a stage that will run names (those of corpora not built left out)."""
        names = ["ar_sft", "av_sft"]
        names += ["expert"] if self.cfg.expert.rows > 0 else []
        names += ["selftext"] if self.cfg.selftext.greedy_rows > 0 else []
        out: list[str] = []
        for name in names:
            for source in parse_mix(getattr(self.cfg.mix, name), f"mix.{name}"):
                if source_kind(source) == "teacher" and self.source_path(source) and source not in out:
                    out.append(source)
        return out

    def av(self) -> Path:
        """The current AV: the last of av_sft, rl, expert that ran."""
        if (self.dir("expert") / "av" / "final").exists():
            return self.dir("expert") / "av" / "final"
        if (self.dir("rl") / "final" / "av").exists():
            return self.dir("rl") / "final" / "av"
        return self.dir("av_sft") / "final"

    def ar(self) -> Path:
        """The current AR: the last of ar_sft, rl and the self-text repeats that ran."""
        repeats = sorted(self.dir("selftext").glob("ar_*/final"), key=lambda p: int(p.parent.name[3:]))
        return repeats[-1] if repeats else self.ar_before_selftext()

    def ar_before_selftext(self) -> Path:
        """The AR the self-text repeats start from: RL's when RL ran, else AR-SFT's."""
        if (self.dir("rl") / "final" / "ar").exists():
            return self.dir("rl") / "final" / "ar"
        return self.dir("ar_sft") / "final"

    def shared(self, *names: str) -> dict[str, Any]:
        return {name: getattr(self.cfg, name) for name in names}

    def trainer(self, out_dir: Path, data: str, **paths: Any) -> dict[str, Any]:
        """What the pipeline fills in for a trainer: its paths and the shared options (layer: the sidecar's)."""
        shared = self.shared("model", "seed", "bf16", "save_every", "keep_last")
        return {"out_dir": out_dir, "data": data, **paths, **shared, "layer": None}

    # ------------------------------------------------------------------ stages
    def corpora(self) -> dict[str, Any]:
        c, out_dir = self.cfg.corpora, self.dir("corpora")
        out_dir.mkdir(parents=True, exist_ok=True)
        pins = dict(c.pin)
        if c.copy_from:  # another run's frozen corpora: copied in, and pinned to the hashes that run recorded
            src = Path(c.copy_from)
            recorded = src / "corpora.json"
            if not recorded.is_file():
                raise NLAError(f"corpora.copy_from: {src} holds no corpora.json (the corpora/ folder of a run)")
            for name, info in json.loads(recorded.read_text(encoding="utf-8")).items():
                if name in ("main", *c.wanted()) and not (out_dir / f"{name}.jsonl").exists():
                    shutil.copy(src / f"{name}.jsonl", out_dir / f"{name}.jsonl")
                pins.setdefault(name, info["sha256"])
        ex = self.cfg.extract
        files: dict[str, Path] = {}
        main = out_dir / "main.jsonl"
        if not main.exists():  # frozen: every later stage reads this file, never the spec again
            write_jsonl(load_corpus(ex.corpus, limit=ex.limit_docs), main)
        files["main"] = main
        for name in c.wanted():
            path = out_dir / f"{name}.jsonl"
            if not path.exists():
                n_chat = c.chats(name)
                build_supplementary(
                    name, path, model=self.cfg.model, languages=c.locale, per_language=c.per_language, n_chat=n_chat,
                    chats=out_dir / f"{PROSE_OF[name]}.jsonl" if name in PROSE_OF else None,
                    max_new_tokens=c.scene_max_new_tokens if name == "scenes" else c.max_new_tokens,
                )  # fmt: skip
                if n_chat:
                    for extra in (Path(str(path) + ".info.json"), Path(str(path) + ".lock")):
                        extra.unlink(missing_ok=True)
            files[name] = path
        out: dict[str, Any] = {}
        for name, path in files.items():
            docs = load_corpus(str(path))
            out[name] = {"path": str(path), "documents": len(docs),
                         "sha256": corpus_sha256(sorted(docs, key=lambda d: d.doc_id))}  # fmt: skip
            pinned = pins.get(name)
            if pinned and pinned != out[name]["sha256"]:
                raise NLAError(
                    f"corpus {name} ({path}) has sha256 {out[name]['sha256']}, not the pinned {pinned}: this machine "
                    "builds other documents; point corpora.copy_from at the pinned run's corpora/ folder, or unpin it"
                )
        atomic_write_text(out_dir / "corpora.json", json.dumps(out, indent=2) + "\n")
        return out

    def extract(self) -> dict[str, Any]:
        shared = self.shared("model", "layer", "seed")
        corpora = self.dir("corpora")
        main = fill_section(self.cfg, "extract", out=self.acts, **shared)
        main = dataclasses.replace(main, corpus=str(corpora / "main.jsonl"))
        res = extract(main)
        empty = [s for s in ("av_sft", "ar_sft", "rl", "eval") if res.rows_per_split.get(s, 0) == 0]
        if empty:
            raise NLAError(f"the corpus is too small: the {', '.join(empty)} split(s) got no rows; use more documents")
        out: dict[str, Any] = {"main": {"rows": res.n_rows, "rows_per_split": res.rows_per_split,
                                        "docs": res.n_used_docs, "seconds": res.seconds}}  # fmt: skip
        for name in self.corpora_built():
            ec = dataclasses.replace(
                main, corpus=str(corpora / f"{name}.jsonl"), out=str(self.dir("extract") / name), limit_docs=None,
                split_fractions=[0.5, 0.5, 0.0, 0.0],
                positions_per_doc=int(self.cfg.corpora.positions.get(name, main.positions_per_doc)),
            )  # fmt: skip
            r = extract(ec)
            out[name] = {"rows": r.n_rows, "rows_per_split": r.rows_per_split, "seconds": r.seconds}
        return out

    def teach(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        sources = self.teacher_sources()
        jobs = [(s, self.acts if "/" not in s else self.dir("extract") / s.split("/")[0]) for s in sources]
        for source, data in [("eval", self.acts), *jobs]:
            target = self.teach_out(source)
            if target.exists() and Path(str(target) + ".nla_meta.yaml").exists():
                out[source] = "kept"
                continue
            limit = self.cfg.held_out_rows if source == "eval" else int(self.cfg.teach_rows.get(source, 0))
            tc = fill_section(self.cfg, "teach", data=data, split=source.split("/")[-1], out=target, limit=limit,
                              seed=self.cfg.seed)  # fmt: skip
            res = teach(tc)
            if res.n_rows == 0 and "/" in source:  # a small supplementary corpus may put no document in a split
                log.warning("teach: %s has no rows; the mixes leave it out", source)
                target.unlink(missing_ok=True)
                Path(str(target) + ".nla_meta.yaml").unlink(missing_ok=True)
                out[source] = "empty"
                continue
            if res.n_kept == 0:
                raise NLAError(f"the teacher kept no row of {source} (drops: {res.drops})")
            out[source] = {"rows": res.n_rows, "kept": res.n_kept, "drops": res.drops}
        return out

    def ar_sft(self) -> dict[str, Any]:
        paths = self.trainer(self.dir("ar_sft"), self.mix("ar_sft"), eval_data=self.eval_data, init="",
                             baseline_data=self.acts)  # fmt: skip
        res = train_ar(fill_section(self.cfg, "ar_sft", **paths))
        return {"steps": res.steps, "final_loss": res.final_loss, "eval": res.final_eval}

    def av_sft(self) -> dict[str, Any]:
        paths = self.trainer(self.dir("av_sft"), self.mix("av_sft"), eval_data=self.eval_data, init="")
        _, res = train_av(fill_section(self.cfg, "av_sft", **paths))
        scale = res.extra.get("injection_scale")
        return {"steps": res.steps, "final_loss": res.final_loss, "eval": res.final_eval, "injection_scale": scale}

    def rl(self) -> dict[str, Any]:
        if not self.cfg.run_rl:
            return {"skipped": "run_rl is false"}
        rc = fill_section(
            self.cfg, "rl", av=self.av(), ar=self.ar(), data=self.acts, split="rl", eval_data=self.eval_data,
            out_dir=self.dir("rl"), **self.shared("seed", "bf16", "save_every", "keep_last"),
        )  # fmt: skip
        res = train_rl(rc)
        last = res.last.record() if res.last is not None else None
        return {"steps": res.steps, "final_eval": res.final_eval, "last_step": last}

    def verbalize(self, section: str, out: Path, **fields: Any) -> Path:
        if out.exists():  # a resumed stage: nla verbalize writes its table last and whole (after the sidecar)
            log.info("%s: already written", out)
            return out
        vc = fill_section(self.cfg, section, data=self.acts, out=out, seed=self.cfg.seed, device=_device(), **fields)
        return verbalize(vc)

    def expert(self) -> dict[str, Any]:
        e = self.cfg.expert
        if e.rows <= 0:
            return {"skipped": "expert.rows is 0"}
        av = self.av()
        self.verbalize("expert.verbalize", self.dir("expert") / "best.parquet", av=av, ar=self.ar(), split="rl",
                       limit=e.rows, every=e.every, best_of=e.best_of, temperature=e.temperature)  # fmt: skip
        finished = _finished_rows(self.dir("expert") / "best.parquet")
        if finished < 2:  # an AV that closes no answer has nothing to learn from its best ones
            log.warning("expert: only %d finished answers; the AV stays as it was", finished)
            return {"rows": e.rows, "finished_rows": finished, "skipped": "fewer than 2 finished answers"}
        paths = self.trainer(self.dir("expert") / "av", self.mix("expert"), init=av, eval_data=self.eval_data)
        _, res = train_av(fill_section(self.cfg, "expert.av", **paths))
        return {"rows": e.rows, "finished_rows": finished, "steps": res.steps, "final_loss": res.final_loss,
                "eval": res.final_eval}  # fmt: skip

    def selftext(self) -> dict[str, Any]:
        s = self.cfg.selftext
        if s.greedy_rows <= 0:
            return {"skipped": "selftext.greedy_rows is 0"}
        av, folder = self.av(), self.dir("selftext")
        self.verbalize("selftext.verbalize", folder / "greedy.parquet", av=av, split="ar_sft", limit=s.greedy_rows,
                       every=s.greedy_every, do_sample=False, temperature=1.0)  # fmt: skip
        if s.sampled_rows > 0:
            sampled = {"limit": s.sampled_rows, "every": s.sampled_every, "temperature": s.temperature}
            self.verbalize("selftext.verbalize", folder / "sampled.parquet", av=av, split="ar_sft", do_sample=True,
                           **sampled)  # fmt: skip
        data = self.mix("selftext")
        repeats: list[dict[str, Any]] = []
        init = self.ar_before_selftext()  # a resumed stage skips the repeats that finished
        for k, (steps, lr) in enumerate(parse_schedule(s.schedule), 1):
            out_dir = folder / f"ar_{k}"
            paths = self.trainer(out_dir, data, init=init, eval_data=self.eval_data, baseline_data=self.acts)
            paths.update(max_steps=steps, lr=lr, seed=self.cfg.seed + k)
            if (out_dir / "final").exists():
                log.info("selftext: repeat %d already done", k)
                metrics = {}
            else:
                res = train_ar(fill_section(self.cfg, "selftext.ar", **paths))
                metrics = {"final_loss": res.final_loss, "eval": res.final_eval}
            repeats.append({"repeat": k, "steps": steps, "lr": lr, **metrics})
            init = out_dir / "final"
        return {"rows": {"greedy": s.greedy_rows, "sampled": s.sampled_rows}, "repeats": repeats}

    def card(self) -> dict[str, Any]:
        compute = self.dir("card") / "compute.yaml"
        atomic_write_text(compute, yaml.safe_dump(self.compute(), sort_keys=False))
        rl_ran = (self.dir("rl") / "final" / "av").exists()
        rl = self.dir("rl") / "final"
        card_path = self.dir("card") / "card.json"
        ec = fill_section(
            self.cfg, "card", av=rl / "av" if rl_ran else "", ar=rl / "ar" if rl_ran else "",
            sft_av=self.dir("av_sft") / "final", sft_ar=self.dir("ar_sft") / "final",
            stage=[f"shipped={self.av()},{self.ar()}"], data=self.eval_data, train_data=self.acts,
            lookup_data=self.acts, out=card_path, compute=compute, seed=self.cfg.seed, model="",
        )  # fmt: skip
        shipped_card = shipped_nla_folder(self.cfg.model) / "card.json"  # the card shipped for this model
        if self.cfg.keep_shipped_rows and not ec.earlier and shipped_card.exists():
            try:  # refused before the long work when the rows differ
                card = evaluation_card(dataclasses.replace(ec, earlier=f"shipped-before={shipped_card}"))
            except NLAError as e:
                if "was not measured on these held-out rows" not in str(e):
                    raise
                log.warning("the shipped NLA's card rows are not kept: %s", e)
                card = evaluation_card(ec)
        else:
            card = evaluation_card(ec)
        log.info("evaluation card:\n%s", format_card(card))
        return {"card": str(card_path), "ladder": card["ladder"]}

    def faithfulness(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k in self.cfg.faithfulness.best_of:
            folder = self.dir("faithfulness") / ("greedy" if k == 1 else f"best_of_{k}")
            report = folder / "report.json"
            if not report.exists():
                fc = fill_section(
                    self.cfg, "faithfulness.suite", av=self.av(), ar=self.ar(), data=self.eval_data,
                    train_data=self.acts, lookup_data=self.acts, out=folder, seed=self.cfg.seed, best_of=k, model="",
                )  # fmt: skip
                run_faithfulness(fc, command=self.command)
            out["greedy" if k == 1 else f"best_of_{k}"] = str(report)
        return out

    @property
    def nla_dir(self) -> Path:
        return self.dir("ship") / "nla"

    def ship(self) -> dict[str, Any]:
        xc = self.cfg.export
        with atomic_dir(self.nla_dir) as tmp:
            rep = export_nla(self.av(), self.ar(), tmp / "pair", rank=xc.rank, dtype=xc.dtype)
            for role in ("av", "ar"):
                shutil.move(str(tmp / "pair" / role), tmp / role)
                drop_tokenizer_files(tmp / role)
            shutil.rmtree(tmp / "pair")
            shutil.copy(self.dir("card") / "card.json", tmp / "card.json")
            # the verdict's reference (nla.explain.trust): each final token's mean training activation
            build_token_lookup(self.acts, self.cfg.model).save(tmp / LOOKUP_FILE)
        nla, size = self.nla_dir, dir_size_mib(self.nla_dir)
        log.info("the compact NLA is in %s (%.1f MiB); nla explain --av %s/av --ar %s/ar uses it", nla, size, nla, nla)
        return {"dir": str(nla), "size_mib": round(size, 2), "rank": rep.rank}

    def compute(self) -> dict[str, Any]:
        """The command, the code version, the corpora, each finished stage's wall time and the machine."""
        import torch

        out: dict[str, Any] = {"command": self.command, "code_version": self.code_version}
        corpora = self.done("corpora") or {}
        out["corpora_sha256"] = {k: v["sha256"] for k, v in corpora.items() if isinstance(v, dict) and "sha256" in v}
        for name in STAGES:
            done = self.done(name)
            if done is not None:
                out[f"{name}_seconds"] = done.get("seconds")
        out["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
        out["torch_threads"] = torch.get_num_threads()
        return out
