"""Text-conditional runs: the captions of a labelled grey-image data set, their tokens, and
the text encoder a run's network reads them with (config key `text: true`).

Everything is rebuilt from the run's config and data (the attribute bins are the tertiles of
the training split, the captions are drawn with the run's seed), so a run folder needs no
extra files and `load_run` gives back the same prompts' meaning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..data.captions import AttributeBins, Tokenizer, make_captions, parse_prompt
from ..models.text import TextEncoder, TokenConditioner
from .tables import Data

# each attribute word of a training caption is left out with this probability, so the model
# also reads partial prompts ("a 3", "a thick 3")
CAPTION_P_DROP = 0.3
TEXT_WIDTH, TEXT_DEPTH, TEXT_HEADS = 64, 2, 4


@dataclass(frozen=True)
class TextSetup:
    """A run's text side: the tokenizer, the attribute bins, and the token ids of the
    training and test captions ((N, max_len) int64 each)."""

    tokenizer: Tokenizer
    bins: AttributeBins
    train_ids: Tensor
    test_ids: Tensor

    def conditioner(self) -> TokenConditioner:
        """A fresh text encoder for the run's network (its weights are the run's)."""
        tok = self.tokenizer
        encoder = TextEncoder(len(tok), TEXT_WIDTH, TEXT_DEPTH, TEXT_HEADS, tok.max_len)
        return TokenConditioner(encoder, start_id=tok.START, pad_id=tok.PAD)

    def prompt_ids(self, prompts: str | Sequence[str], n: int | None = None) -> Tensor:
        """Token ids (len(prompts), max_len) of prompts checked by `parse_prompt` (unknown
        words are errors naming them); one prompt with n repeats it n times."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        for p in prompts:
            parse_prompt(p)
        if n is not None:
            if len(prompts) != 1:
                raise ValueError("give one prompt to repeat n times, or n = None")
            prompts = prompts * n
        return self.tokenizer(prompts)[0]


def text_setup(data: Data, seed: int) -> TextSetup:
    """Captions for `data` (labelled grey images): bins fitted on its training split, training
    captions with attribute words dropped at CAPTION_P_DROP (drawn from `seed`), full test
    captions."""
    if data.train_labels is None or data.test_labels is None or data.num_classes is None:
        raise ValueError(
            f"text: true needs labelled images to caption; {data.name!r} has no labels "
            "(use digits or mnist:FOLDER)"
        )
    if not data.is_image or data.event_shape[0] != 1:
        raise ValueError(
            f"text: true captions grey images (1, H, W); {data.name!r} has examples of shape "
            f"{data.event_shape}"
        )
    bins = AttributeBins.fit(data.train, data.train_labels, data.num_classes)
    tok = Tokenizer()
    g = torch.Generator().manual_seed(seed)
    train = make_captions(data.train, data.train_labels, bins, p_drop=CAPTION_P_DROP, generator=g)
    test = make_captions(data.test, data.test_labels, bins)
    return TextSetup(tok, bins, tok(train)[0], tok(test)[0])
