"""``moviechat_ft``: a model trained (or converted) here, as an lmms-eval model.

    lmms-eval --model moviechat_ft --model_args pretrained=runs/X,batch_size=16 \
        --tasks moviechat_ft_global,moviechat_ft_breakpoint --include_path TASKS_DIR

lmms-eval hands each rank all its requests at once: they are grouped by video and each video's questions are
answered from one streaming pass (global questions on the memory at the end, breakpoint questions on the memory
as it stands at their frame), answers returned in request order. Answers equal ``moviechat answer`` on the same
run, videos, questions and settings.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Optional

import torch
from lmms_eval import utils as lmms_utils
from lmms_eval.api.model import lmms

from moviechat.answering.answerer import Answerer
from moviechat.answering.breakpoints import BreakpointConvention
from moviechat.lmms_eval_plugin.requests import Ask, PathLookup, answer_asks, ask_of, log
from moviechat.lmms_eval_plugin.settings import PluginSettings
from moviechat.runs.provenance import source_of


def load_answerer(settings: PluginSettings) -> Answerer:
    """The answerer of ``pretrained``: a run folder or checkpoint, an ``hf`` export, or a .pth with its config."""
    conventions = BreakpointConvention(settings.breakpoint_convention, settings.current_frame)
    if settings.config:
        from moviechat.runs.loading import load_with_config

        cfg, tokenizer, model = load_with_config(settings.pretrained, settings.config)
        answerer = Answerer(cfg, tokenizer, model, settings.max_new_tokens, settings.batch_size, settings.generation,
                            breakpoints=conventions)
        answerer.source = source_of(cfg, Path(settings.pretrained))
    else:
        answerer = Answerer.load(settings.pretrained, settings.max_new_tokens, settings.generation,
                                 settings.trust_checkpoint, settings.batch_size, conventions)
    if settings.preset and settings.preset != answerer.cfg.memory.preset:
        answerer.use_memory(dataclasses.replace(answerer.cfg.memory, preset=settings.preset))
    answerer.model.to(device_of(settings))
    return answerer


def device_of(settings: PluginSettings) -> torch.device:
    if settings.device:
        return torch.device(settings.device)
    return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")


class MovieChatFT(lmms):
    """lmms-eval's model interface over :class:`~moviechat.answering.answerer.Answerer`."""

    is_simple = True

    def __init__(self, **model_args) -> None:
        super().__init__()
        self.settings = PluginSettings.of(model_args)
        self.answerer = load_answerer(self.settings)
        # decoding and the frozen ViT, loaded once (the videos it reads are set per call)
        self.lookup = PathLookup(self.answerer.cfg, {}, *self.settings.decoding(), self.answerer.model.device)
        self._rank = int(os.environ.get("RANK", 0))  # lmms-eval sets these again when WORLD_SIZE > 1
        self._world_size = int(os.environ.get("WORLD_SIZE", 1))
        self.counts: dict[str, int] = {}

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: Optional[dict] = None) -> "MovieChatFT":
        """``--model_args`` win over lmms-eval's own ``--batch_size`` / ``--device`` (which it always passes)."""
        args = lmms_utils.simple_parse_args_string(arg_string)
        for key in ("batch_size", "device"):
            value = (additional_config or {}).get(key)
            if key not in args and value is not None and str(value) != "auto":
                args[key] = int(value) if key == "batch_size" else str(value)
        return cls(**args)

    @property
    def batch_size(self) -> int:
        return self.settings.batch_size

    @property
    def device(self) -> torch.device:
        return self.answerer.model.device

    def _asks(self, requests) -> list[Ask]:
        asks = []
        for req in requests:
            context, _gen_kwargs, doc_to_visual, doc_id, task, split = req.args[:6]
            visuals = doc_to_visual(self.task_dict[task][split][doc_id])
            asks.append(ask_of(context, visuals, f"{task} doc {doc_id}"))
        return asks

    def generate_until(self, requests) -> list[str]:
        """Every request answered (greedy unless ``generation=moviechat``), a video's questions from one pass."""
        if not requests:
            return []
        answers, counts = answer_asks(self.answerer, self.lookup, self._asks(requests), self.settings.cache_folder())
        for key, value in counts.items():
            self.counts[key] = self.counts.get(key, 0) + value
        log.info("moviechat_ft rank %d: %s", self.rank, counts)
        return answers

    def generate_until_multi_round(self, requests) -> list[str]:
        """A chat on each video's global memory: round after round of the task's ``doc_to_text`` (given the
        earlier answers) until it says stop; the answers of all rounds joined by newlines."""
        from moviechat.lmms_eval_plugin.chat_rounds import chat_rounds

        return [chat_rounds(self, req) for req in requests]

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        raise NotImplementedError("moviechat_ft answers open questions (generate_until, generate_until_multi_round); "
                                  "loglikelihood (multiple-choice scoring) is not supported: use a generate_until "
                                  "task")
