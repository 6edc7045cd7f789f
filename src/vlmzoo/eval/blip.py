"""BLIP image-text retrieval: ITC ranking, ITM re-ranking of the top k, recall@k; ITM pair scores.

The evaluation of salesforce/BLIP's train_retrieval.py ``evaluation`` / ``itm_eval`` (the
paper's section 5.2 protocol, zero-shot on Flickr30K with the COCO-finetuned model):

1. every image and text is embedded once (``vision_proj`` / ``text_proj`` of the CLS features,
   L2-normalised) and ``sims = image_embeds @ text_embeds.T`` ([N_img, N_txt], cosine, no
   temperature) ranks the candidates (ITC);
2. for each image the ``k_test`` texts with the highest similarity (and for each text the
   ``k_test`` images) go through the image-grounded encoder (first token ``[ENC]``) and the ITM
   head; their score becomes ``itm_logit(match) + sims`` — the raw match logit, not its
   probability — and every other entry of the score matrices is -100 (``score_matrix_i2t``,
   ``score_matrix_t2i``); BLIP evaluates COCO and Flickr30K with ``k_test`` 256 and 128;
3. recall@k: image -> text counts a hit when *any* of the image's captions ranks in the top k
   (COCO and Flickr30K have five per image), text -> image when the text's image does.

Everything runs without gradients in eval mode (the model's mode is restored), in batches: the
image tokens wait on ``store`` (the CPU by default: 5,000 COCO images at 384 px are 577 x 768
floats each, about 9 GB), and the ITM pairs of both directions are scored once each, in batches
of ``batch_size`` pairs. ``progress=True`` shows tqdm bars.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlmzoo.errors import InputError
from vlmzoo.eval.model_kind import BLIP, require_kind
from vlmzoo.models.blip import BLIPModel

# train_retrieval.py fills the entries outside the top k with this score
OUTSIDE_TOP_K = -100.0


@dataclass
class ImageFeatures:
    """``tokens`` [N, 1 + P, Cv] the image encoder's output (on the ``store`` device) and
    ``embeds`` [N, D] the L2-normalised ITC embeddings (on the model's device)."""

    tokens: torch.Tensor
    embeds: torch.Tensor


@dataclass
class RetrievalResult:
    """``metrics`` (recall@k both ways, fractions in [0, 1]), ``sims`` [N_img, N_txt] the ITC
    cosine similarities, ``i2t`` [N_img, N_txt] / ``t2i`` [N_txt, N_img] the score matrices
    recall was read from (ITM re-ranked, or ``sims`` itself without re-ranking); all on the CPU."""

    metrics: dict[str, float]
    sims: torch.Tensor
    i2t: torch.Tensor
    t2i: torch.Tensor


@contextmanager
def _evaluating(model: torch.nn.Module) -> Iterator[tuple[torch.device, torch.dtype]]:
    """Eval mode for the block (the model's own mode afterwards); yields its device and dtype."""
    was_training = model.training
    model.eval()
    p = next(model.parameters())
    try:
        yield p.device, p.dtype
    finally:
        model.train(was_training)


def _chunks(n: int, batch_size: int, desc: str, progress: bool) -> Iterable[slice]:
    """Slices of ``batch_size`` rows over ``n`` (behind a tqdm bar with ``progress``)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    chunks = [slice(s, s + batch_size) for s in range(0, n, batch_size)]
    return _bar(chunks, len(chunks), desc, progress)


def _bar(items: Iterable, total: int | None, desc: str, progress: bool) -> Iterable:
    if not progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, total=total, desc=desc)


def _mask(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    return torch.ones_like(input_ids) if attention_mask is None else attention_mask


def _image_batches(images: torch.Tensor | Iterable[torch.Tensor], batch_size: int) -> Iterable[torch.Tensor]:
    if not isinstance(images, torch.Tensor):
        return images
    if images.ndim != 4:
        raise InputError(f"pixel_values must be [N, 3, H, W], got {tuple(images.shape)}")
    return [images[c] for c in _chunks(images.shape[0], batch_size, "", False)]


@torch.no_grad()
def encode_images(
    model: BLIPModel,
    images: torch.Tensor | Iterable[torch.Tensor],
    *,
    batch_size: int = 64,
    store: str | torch.device = "cpu",
    progress: bool = False,
) -> ImageFeatures:
    """Image tokens and ITC embeddings of ``images``: pixel values [N, 3, H, W] (split into
    batches of ``batch_size``) or an iterable of [b, 3, H, W] batches (a data loader's)."""
    require_kind(model, BLIP, "encode_images")
    tokens, embeds = [], []
    with _evaluating(model) as (device, dtype):
        for batch in _bar(_image_batches(images, batch_size), None, "images", progress):
            t = model.encode_image(batch.to(device=device, dtype=dtype))
            embeds.append(model.image_embeds(t))
            tokens.append(t.to(store))
    if not tokens:
        raise InputError("no images to encode")
    return ImageFeatures(torch.cat(tokens), torch.cat(embeds))


@torch.no_grad()
def encode_texts(
    model: BLIPModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    batch_size: int = 256,
    progress: bool = False,
) -> torch.Tensor:
    """[N_txt, D] L2-normalised ITC embeddings of texts ``input_ids`` [N_txt, L] ([CLS] first,
    right-padded; the unimodal text encoder)."""
    require_kind(model, BLIP, "encode_texts")
    mask = _mask(input_ids, attention_mask)
    with _evaluating(model) as (device, _):
        out = [
            model.text_embeds(input_ids[c].to(device), mask[c].to(device))
            for c in _chunks(input_ids.shape[0], batch_size, "texts", progress)
        ]
    if not out:
        raise InputError("no texts to encode")
    return torch.cat(out)


@torch.no_grad()
def pair_itm_logits(
    model: BLIPModel,
    image_tokens: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    pairs: torch.Tensor,
    *,
    batch_size: int = 128,
    progress: bool = False,
) -> torch.Tensor:
    """[P] ITM match logits (``itm_head`` column 1, first token ``[ENC]``) of the (image, text)
    index ``pairs`` [P, 2] into ``image_tokens`` [N_img, 1 + N, Cv] and ``input_ids`` [N_txt, L].

    Each batch keeps only the text columns some row in it uses (padding at the end is masked
    anyway), so short captions are not run at the longest one's length.
    """
    require_kind(model, BLIP, "pair_itm_logits")
    mask = _mask(input_ids, attention_mask)
    out = [torch.zeros(0)]
    with _evaluating(model) as (device, _):
        for c in _chunks(pairs.shape[0], batch_size, "ITM", progress):
            image_idx, text_idx = pairs[c].unbind(dim=1)
            length = int(mask[text_idx].sum(dim=1).max())
            ids, m = input_ids[text_idx, :length].to(device), mask[text_idx, :length].to(device)
            tokens = image_tokens[image_idx.to(image_tokens.device)].to(device)
            out.append(model.itm_logits(tokens, ids, m)[:, 1].float().cpu())
    return torch.cat(out)


@torch.no_grad()
def itm_rerank(
    model: BLIPModel,
    sims: torch.Tensor,
    image_tokens: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    k_test: int = 256,
    batch_size: int = 128,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BLIP's re-ranking (train_retrieval.py ``evaluation``): the score matrices ``i2t``
    [N_img, N_txt] and ``t2i`` [N_txt, N_img], ``itm_logit + sims`` for each image's ``k_test``
    most similar texts (and each text's ``k_test`` most similar images), -100 elsewhere.

    ``sims`` [N_img, N_txt] ITC similarities; ``image_tokens`` [N_img, 1 + N, Cv]; texts
    ``input_ids`` / ``attention_mask`` [N_txt, L] ([CLS] first: ``[ENC]`` replaces it). A pair in
    both directions' top k is scored once.
    """
    require_kind(model, BLIP, "itm_rerank")
    if isinstance(k_test, bool) or not isinstance(k_test, int) or k_test < 1:
        raise InputError(f"k_test must be a positive integer, got {k_test!r}")
    n_img, n_txt = sims.shape
    if image_tokens.shape[0] != n_img or input_ids.shape[0] != n_txt:
        raise InputError(
            f"sims is [{n_img}, {n_txt}] but there are {image_tokens.shape[0]} images and "
            f"{input_ids.shape[0]} texts"
        )
    sims = sims.float().cpu()
    top_t = sims.topk(min(k_test, n_txt), dim=1)  # [N_img, k] texts of each image
    top_i = sims.t().topk(min(k_test, n_img), dim=1)  # [N_txt, k] images of each text
    rows_i = torch.arange(n_img)[:, None].expand_as(top_t.indices)
    rows_t = torch.arange(n_txt)[:, None].expand_as(top_i.indices)
    i2t_pairs = torch.stack([rows_i.reshape(-1), top_t.indices.reshape(-1)], dim=1)
    t2i_pairs = torch.stack([top_i.indices.reshape(-1), rows_t.reshape(-1)], dim=1)
    keys = torch.cat([i2t_pairs[:, 0] * n_txt + i2t_pairs[:, 1], t2i_pairs[:, 0] * n_txt + t2i_pairs[:, 1]])
    unique, where = keys.unique(return_inverse=True)
    pairs = torch.stack([unique // n_txt, unique % n_txt], dim=1)
    logits = pair_itm_logits(
        model, image_tokens, input_ids, attention_mask, pairs, batch_size=batch_size, progress=progress
    )[where]
    i2t = torch.full((n_img, n_txt), OUTSIDE_TOP_K)
    t2i = torch.full((n_txt, n_img), OUTSIDE_TOP_K)
    i2t.scatter_(1, top_t.indices, logits[: i2t_pairs.shape[0]].view_as(top_t.values) + top_t.values)
    t2i.scatter_(1, top_i.indices, logits[i2t_pairs.shape[0] :].view_as(top_i.values) + top_i.values)
    return i2t, t2i


def recall_at_k(
    i2t: torch.Tensor,
    t2i: torch.Tensor,
    text_to_image: Sequence[int] | torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Recall@k both ways (train_retrieval.py ``itm_eval``), as fractions in [0, 1].

    ``i2t`` [N_img, N_txt] and ``t2i`` [N_txt, N_img] scores (higher = better);
    ``text_to_image`` [N_txt] the image of each text. Image -> text: the best-ranked of the
    image's texts counts; text -> image: its own image. A rank is the number of other candidates
    scoring higher or the same (ties go against the true pair). Returns ``image_to_text_R@k``,
    ``text_to_image_R@k`` for each k and ``R_mean``, the mean of them all (BLIP's ``r_mean``).
    """
    n_img, n_txt = i2t.shape
    owner = torch.as_tensor(text_to_image, dtype=torch.long)
    if t2i.shape != (n_txt, n_img) or owner.shape != (n_txt,):
        raise InputError(
            f"i2t {tuple(i2t.shape)}, t2i {tuple(t2i.shape)} and text_to_image {tuple(owner.shape)} "
            f"do not describe {n_img} images and {n_txt} texts"
        )
    if n_txt and (int(owner.min()) < 0 or int(owner.max()) >= n_img):
        raise InputError(f"text_to_image holds image indices outside [0, {n_img})")
    i2t, t2i = i2t.float().cpu(), t2i.float().cpu()
    own = owner[None, :] == torch.arange(n_img)[:, None]  # [N_img, N_txt]: text j is image i's
    if not bool(own.any(dim=1).all()):
        raise InputError("every image needs at least one text in text_to_image")
    # a tie counts against the true pair (BLIP's argsort orders ties arbitrarily): so a pair left
    # out of the re-ranked top k, at -100 with the rest, is never found, whatever k is asked for
    best_own = i2t.masked_fill(~own, float("-inf")).max(dim=1).values[:, None]
    rank_i2t = ((i2t > best_own) | ((i2t == best_own) & ~own)).sum(dim=1)
    true = t2i.gather(1, owner[:, None])
    other = torch.ones_like(t2i, dtype=torch.bool).scatter_(1, owner[:, None], False)
    rank_t2i = ((t2i > true) | ((t2i == true) & other)).sum(dim=1)
    out: dict[str, float] = {}
    for name, rank in (("image_to_text", rank_i2t), ("text_to_image", rank_t2i)):
        for k in ks:
            out[f"{name}_R@{k}"] = float((rank < k).float().mean())
    out["R_mean"] = sum(out.values()) / len(out)
    return out


@torch.no_grad()
def evaluate_retrieval(
    model: BLIPModel,
    images: torch.Tensor | Iterable[torch.Tensor],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    text_to_image: Sequence[int] | torch.Tensor,
    *,
    k_test: int | None = 256,
    ks: Sequence[int] = (1, 5, 10),
    image_batch_size: int = 64,
    text_batch_size: int = 256,
    itm_batch_size: int = 128,
    store: str | torch.device = "cpu",
    progress: bool = False,
) -> RetrievalResult:
    """Image-text retrieval as BLIP evaluates it (see the module docstring).

    ``images``: pixel values [N_img, 3, H, W] or an iterable of batches; texts ``input_ids`` /
    ``attention_mask`` [N_txt, L] as BERT's tokenizer writes them ([CLS] first, right-padded;
    train_retrieval.py pads to 35); ``text_to_image`` [N_txt] the image of each text. ``k_test``:
    how many ITC candidates ITM re-ranks (None: rank by ITC alone, the model needs no ITM head).
    """
    require_kind(model, BLIP, "evaluate_retrieval")
    features = encode_images(model, images, batch_size=image_batch_size, store=store, progress=progress)
    texts = encode_texts(model, input_ids, attention_mask, batch_size=text_batch_size, progress=progress)
    sims = (features.embeds.float() @ texts.float().t()).cpu()
    if k_test is None:
        i2t, t2i = sims, sims.t()
    else:
        i2t, t2i = itm_rerank(
            model,
            sims,
            features.tokens,
            input_ids,
            attention_mask,
            k_test=k_test,
            batch_size=itm_batch_size,
            progress=progress,
        )
    return RetrievalResult(recall_at_k(i2t, t2i, text_to_image, ks), sims, i2t, t2i)


@torch.no_grad()
def itm_scores(
    model: BLIPModel,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    batch_size: int = 64,
    progress: bool = False,
) -> torch.Tensor:
    """[N] probability that image i [N, 3, H, W] and text i [N, L] match (softmax of the ITM
    logits, first token ``[ENC]``), in batches of ``batch_size`` pairs."""
    require_kind(model, BLIP, "itm_scores")
    if pixel_values.shape[0] != input_ids.shape[0]:
        raise InputError(
            f"ITM pairs image i with text i: {pixel_values.shape[0]} images, {input_ids.shape[0]} texts"
        )
    mask = _mask(input_ids, attention_mask)
    out = [torch.zeros(0)]
    with _evaluating(model) as (device, dtype):
        for c in _chunks(input_ids.shape[0], batch_size, "ITM", progress):
            tokens = model.encode_image(pixel_values[c].to(device=device, dtype=dtype))
            logits = model.itm_logits(tokens, input_ids[c].to(device), mask[c].to(device))
            out.append(F.softmax(logits.float(), dim=-1)[:, 1].cpu())
    return torch.cat(out)
