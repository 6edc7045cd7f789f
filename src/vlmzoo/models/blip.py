"""BLIP (Li et al. 2022, "BLIP: Bootstrapping Language-Image Pre-training"): one image encoder, the MED text side.

    pixels ─► visual_encoder (ViT) ─► image tokens [B, 1+N, Cv] ──┬─► vision_proj(CLS) ─► ITC
                                                                   ├─► text_encoder (cross-attn) ─► itm_head ─► ITM
                                                                   └─► text_decoder (causal) ─► LM (captions)

:class:`BLIPModel` holds whichever parts a model has, under salesforce/BLIP's module names
(``visual_encoder``, ``text_encoder``, ``text_decoder``, ``vision_proj``, ``text_proj``,
``itm_head``, ``temp``; models/blip_pretrain.py, blip_retrieval.py, blip.py, blip_vqa.py):

- **pretraining** (``blip-base``, ``blip-large``): all of them; the decoder shares everything
  with the encoder except its self-attention (blip_pretrain.py ``tie_encoder_decoder_weights``
  with skip key ``'/attention'``: embeddings, cross-attention and FFNs are one set of weights).
- **captioning** (``blip-*-caption``; blip.py ``BLIP_Decoder``, transformers'
  ``BlipForConditionalGeneration``): image encoder + decoder only, nothing tied but the LM head
  to the decoder's own word embeddings.
- **retrieval** (``blip-*-retrieval``; blip_itm.py ``BLIP_ITM``, transformers'
  ``BlipForImageTextRetrieval``): image encoder + text encoder + projections + ITM head.
- **VQA** (``blip-base-vqa``; blip_vqa.py ``BLIP_VQA``, transformers'
  ``BlipForQuestionAnswering``): the text encoder reads the question against the image, a
  separate (untied) decoder writes the answer cross-attending the question encoding.

Every method takes text as BERT's tokenizer writes it (``[CLS] ... [SEP] [PAD]...``, padded on
the right) and puts the first token each mode needs in place, as the original does: ``[CLS]``
for the unimodal encoder (ITC), ``[ENC]`` for the image-grounded encoder (ITM, the VQA
question), ``[DEC]`` for the decoder.

Losses (section 3.2): ITC in-batch (the original adds momentum encoders, queues of 57,600
features and soft targets from the momentum model, alpha 0.4; **not implemented here**), ITM with
hard negatives sampled from the ITC similarities, LM with label smoothing 0.1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from vlmzoo.config import Config
from vlmzoo.decoders.hf import IGNORE_INDEX
from vlmzoo.encoders.blip_text import MEDConfig, MEDText
from vlmzoo.encoders.vit import BLIP_VISION_PRESETS, VisionTransformer, ViTConfig
from vlmzoo.errors import InputError
from vlmzoo.layers.stack import BlockStack
from vlmzoo.models.clip import contrastive_loss
from vlmzoo.registry import register, register_architecture
from vlmzoo.weights.hub import HubMixin

# bert-base-uncased + the two tokens salesforce/BLIP's models/blip.py ``init_tokenizer`` adds:
# bos_token '[DEC]' (30522), then '[ENC]' (30523). [SEP] (102) ends a caption, [PAD] is 0.
DEC_TOKEN_ID, ENC_TOKEN_ID, SEP_TOKEN_ID = 30522, 30523, 102
# "a picture of " in bert-base-uncased word pieces: BLIP_Decoder's default captioning prompt.
PICTURE_OF = (1037, 3861, 1997)
# The temperature's clamp (blip_pretrain.py / blip_retrieval.py ``self.temp.clamp_(0.001, 0.5)``).
TEMP_MIN, TEMP_MAX = 0.001, 0.5


@dataclass
class BLIPConfig(Config):
    """The parts of a BLIP model and the token ids it uses.

    ``text_encoder`` (cross-attending the image: ``context_dim`` = the image width, no LM head)
    and ``text_decoder`` (with ``lm_head``) are each present or ``None``. The decoder reads the
    image (``decoder_reads="image"``: captioning, pretraining) or the question encoding
    (``"question"``: VQA, whose decoder's ``context_dim`` is the text width). ``retrieval_heads``
    adds ``vision_proj`` / ``text_proj`` (-> ``embed_dim``) and ``itm_head``. ``temperature`` is
    the initial ITC temperature of the learnable ``temp`` (0.07), or ``None`` for none
    (transformers' ``BlipForImageTextRetrieval`` drops it). ``tie_decoder``: pretraining's sharing
    of everything but self-attention between decoder and encoder. ``prompt_ids``: the captioning
    prompt's word pieces (without ``[CLS]`` / ``[SEP]``); the LM loss does not score them.
    ``label_smoothing``: of the LM losses (0.1 in med.py ``BertLMHeadModel``).
    """

    kind = "model"

    vision: ViTConfig = field(default_factory=lambda: BLIP_VISION_PRESETS["blip-vit-b16"])
    text_encoder: MEDConfig | None = field(default_factory=MEDConfig)
    text_decoder: MEDConfig | None = field(default_factory=lambda: MEDConfig(lm_head=True))
    decoder_reads: Literal["image", "question"] = "image"
    retrieval_heads: bool = True
    embed_dim: int = 256
    temperature: float | None = 0.07
    tie_decoder: bool = False
    label_smoothing: float = 0.1
    bos_token_id: int = DEC_TOKEN_ID
    enc_token_id: int = ENC_TOKEN_ID
    sep_token_id: int = SEP_TOKEN_ID
    prompt_ids: tuple[int, ...] = ()

    def validate(self) -> None:
        v, enc, dec = self.vision, self.text_encoder, self.text_decoder
        if not v.class_token or v.feature_tokens != "all" or v.num_registers:
            self._fail(
                "vision", "BLIP reads [CLS, patches...]: class_token=True, feature_tokens='all', no registers"
            )
        if v.embed_dim is not None:
            self._fail("vision", "the image projection is BLIP's vision_proj: vision.embed_dim must be None")
        if enc is None and dec is None:
            self._fail("text_encoder", "a BLIP model needs a text encoder, a text decoder or both")
        if enc is not None:
            if enc.lm_head:
                self._fail(
                    "text_encoder",
                    "the text encoder has no LM head: set text_encoder.lm_head=False "
                    "(the LM head is text_decoder's)",
                )
            if enc.context_dim != v.width:
                self._fail("text_encoder", f"context_dim={enc.context_dim} must be the image width {v.width}")
        if dec is not None:
            if not dec.lm_head:
                self._fail("text_decoder", "the decoder needs its LM head: set text_decoder.lm_head=True")
            if self.decoder_reads == "question":
                if enc is None:
                    self._fail("decoder_reads", "a decoder reading the question needs the text encoder")
                if dec.context_dim != enc.width:
                    self._fail(
                        "text_decoder",
                        f"context_dim={dec.context_dim} must be the question width {enc.width}",
                    )
            elif dec.context_dim != v.width:
                self._fail("text_decoder", f"context_dim={dec.context_dim} must be the image width {v.width}")
        if self.retrieval_heads and enc is None:
            self._fail("retrieval_heads", "ITC/ITM heads need the text encoder")
        self._check_positive("embed_dim")
        if self.temperature is not None:
            if not self.retrieval_heads:
                self._fail(
                    "temperature", "the ITC temperature needs retrieval_heads=True (or temperature=None)"
                )
            if not TEMP_MIN <= self.temperature <= TEMP_MAX:
                self._fail("temperature", f"must be in [{TEMP_MIN}, {TEMP_MAX}] (BLIP's clamp)")
        if self.tie_decoder:
            if enc is None or dec is None or self.decoder_reads != "image":
                self._fail(
                    "tie_decoder",
                    "tying needs a text encoder and a decoder that reads the image (decoder_reads='image'): "
                    "give it both, or set tie_decoder=False",
                )
            if enc.replace(lm_head=True) != dec:
                self._fail(
                    "tie_decoder",
                    "tied encoder and decoder must have the same sizes: make text_decoder "
                    "text_encoder.replace(lm_head=True), or set tie_decoder=False",
                )
        if not 0.0 <= self.label_smoothing < 1.0:
            self._fail("label_smoothing", "must be in [0, 1)")
        vocab = min(c.vocab_size for c in (enc, dec) if c is not None)
        for name in ("bos_token_id", "enc_token_id", "sep_token_id"):
            if not 0 <= getattr(self, name) < vocab:
                self._fail(name, f"must be a token id in [0, {vocab})")
        if any(not 0 <= t < vocab for t in self.prompt_ids):
            self._fail("prompt_ids", f"must be token ids in [0, {vocab})")

    @property
    def prompt_length(self) -> int:
        """Leading decoder positions the LM loss skips: ``[DEC]`` + the prompt (blip.py's
        ``prompt_length = len(tokenizer(prompt).input_ids) - 1``)."""
        return 1 + len(self.prompt_ids)


@dataclass
class BLIPOutput:
    """``loss`` = the sum of the objectives the model has (pretraining: ITC + ITM + LM, the
    paper's section 3.2), each also given alone (``None`` where absent)."""

    loss: torch.Tensor
    itc: torch.Tensor | None = None
    itm: torch.Tensor | None = None
    lm: torch.Tensor | None = None


def first_token(input_ids: torch.Tensor, token_id: int) -> torch.Tensor:
    """A copy of ``input_ids`` [B, L] whose first column is ``token_id`` (BLIP swaps [CLS] for
    [ENC] or [DEC] this way: ``text.input_ids[:, 0] = tokenizer.enc_token_id``)."""
    ids = input_ids.clone()
    ids[:, 0] = token_id
    return ids


def lm_targets(input_ids: torch.Tensor, pad_token_id: int, skip: int = 0) -> torch.Tensor:
    """[B, L] targets: the ids, with padding and the first ``skip`` positions set to IGNORE_INDEX."""
    targets = input_ids.masked_fill(input_ids == pad_token_id, IGNORE_INDEX)
    targets[:, :skip] = IGNORE_INDEX
    return targets


def shifted_lm_loss(
    logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float, per_sequence: bool = False
) -> torch.Tensor:
    """Next-token cross-entropy: ``logits`` [B, L, V] at position t score ``targets`` [B, L] at t+1.

    Mean over the scored tokens, or (``per_sequence``) [B] sums over each row's tokens — med.py's
    ``reduction='none'``, which BLIP's VQA loss weights per answer.
    """
    flat_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    flat_targets = targets[:, 1:].reshape(-1)
    reduction = "none" if per_sequence else "mean"
    loss = F.cross_entropy(
        flat_logits,
        flat_targets,
        ignore_index=IGNORE_INDEX,
        label_smoothing=label_smoothing,
        reduction=reduction,
    )
    return loss.view(logits.shape[0], -1).sum(dim=1) if per_sequence else loss


@register_architecture
class BLIPModel(BlockStack, HubMixin, nn.Module):
    """A BLIP model: ``visual_encoder`` plus the text parts, heads and ``temp`` its config names."""

    config_class = BLIPConfig

    def __init__(self, config: BLIPConfig):
        super().__init__()
        self.config = c = config
        self.visual_encoder = VisionTransformer(c.vision)
        self.text_encoder = MEDText(c.text_encoder) if c.text_encoder is not None else None
        self.text_decoder = MEDText(c.text_decoder) if c.text_decoder is not None else None
        if c.retrieval_heads:
            text_width = c.text_encoder.width  # type: ignore[union-attr]
            self.vision_proj = nn.Linear(c.vision.width, c.embed_dim)
            self.text_proj = nn.Linear(text_width, c.embed_dim)
            self.itm_head = nn.Linear(text_width, 2)
        else:
            self.vision_proj = self.text_proj = self.itm_head = None
        self.temp = nn.Parameter(torch.tensor(float(c.temperature))) if c.temperature is not None else None
        if c.tie_decoder:
            self._tie_decoder()

    def _tie_decoder(self) -> None:
        """Share embeddings, cross-attention and FFNs (with their norms) between the encoder and
        the decoder; each keeps its own self-attention (blip_pretrain.py
        ``tie_encoder_decoder_weights(..., '/attention')``)."""
        enc, dec = self.text_encoder, self.text_decoder
        dec.word_embeddings, dec.position_embeddings, dec.layernorm = (
            enc.word_embeddings,
            enc.position_embeddings,
            enc.layernorm,
        )
        for e, d in zip(enc.layers, dec.layers, strict=True):
            d.cross_attn, d.cross_norm, d.mlp, d.mlp_norm = e.cross_attn, e.cross_norm, e.mlp, e.mlp_norm
        dec.tie_weights()

    def stack_parts(self) -> list[BlockStack]:
        """The image encoder's blocks and each text part's layers."""
        return [p for p in (self.visual_encoder, self.text_encoder, self.text_decoder) if p is not None]

    # --- the parts --------------------------------------------------------------------------
    def _need(self, part: str, what: str) -> nn.Module:
        module = getattr(self, part)
        if module is None:
            raise InputError(f"{what} needs {part}, which this BLIP model does not have")
        return module

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, 1 + N, vision width] image tokens (CLS first, final-normed)."""
        return self.visual_encoder(pixel_values).tokens

    def image_embeds(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """[B, 1 + N, Cv] image tokens -> [B, embed_dim] L2-normalised ITC embeddings (of CLS)."""
        proj = self._need("vision_proj", "image_embeds")
        return F.normalize(proj(image_tokens[:, 0]), dim=-1)

    def text_embeds(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """[B, L] ids ([CLS] first) -> [B, embed_dim] L2-normalised ITC embeddings (unimodal mode)."""
        encoder = self._need("text_encoder", "text_embeds")
        proj = self._need("text_proj", "text_embeds")
        return F.normalize(proj(encoder(input_ids, attention_mask).tokens[:, 0]), dim=-1)

    def itc_similarity(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Cosine similarity of every image [B_img, 3, H, W] with every text [B_txt, L]: [B_img, B_txt]
        (blip_itm.py ``match_head='itc'``; no temperature)."""
        return (
            self.image_embeds(self.encode_image(pixel_values))
            @ self.text_embeds(input_ids, attention_mask).t()
        )

    def itm_logits(
        self,
        image_tokens: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        replace_first: bool = True,
    ) -> torch.Tensor:
        """[B, 2] ITM logits (column 1 = match) of image i with text i: ``itm_head`` on the first
        token of the image-grounded encoder. ``image_tokens`` [B, 1 + N, Cv]; ``input_ids`` [B, L].

        The first token becomes ``[ENC]`` (``replace_first``), as BLIP trains and evaluates ITM
        (blip_retrieval.py, train_retrieval.py's ``evaluation``); blip_itm.py and transformers'
        ``BlipForImageTextRetrieval`` feed the ids as given (``replace_first=False``).
        """
        encoder = self._need("text_encoder", "ITM")
        head = self._need("itm_head", "ITM")
        ids = first_token(input_ids, self.config.enc_token_id) if replace_first else input_ids
        if image_tokens.shape[0] != ids.shape[0]:
            raise InputError(
                f"ITM pairs image i with text i: {image_tokens.shape[0]} images, {ids.shape[0]} texts"
            )
        return head(encoder(ids, attention_mask, context=image_tokens).tokens[:, 0])

    def itm_score(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        replace_first: bool = True,
    ) -> torch.Tensor:
        """[B] probability that image i [B, 3, H, W] and text i [B, L] match (softmax of the ITM logits)."""
        logits = self.itm_logits(self.encode_image(pixel_values), input_ids, attention_mask, replace_first)
        return logits.float().softmax(dim=-1)[:, 1]

    def decoder_logits(
        self,
        image_tokens: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[B, L, vocab] next-token logits of the captioning decoder reading ``image_tokens``
        [B, 1 + N, Cv]; ``input_ids`` [B, L] get ``[DEC]`` as their first token."""
        decoder = self._need("text_decoder", "the captioning decoder")
        if self.config.decoder_reads != "image":
            raise InputError(
                "this model's decoder reads a question encoding (VQA): use answer() / answer_loss()"
            )
        ids = first_token(input_ids, self.config.bos_token_id)
        return decoder(ids, attention_mask, context=image_tokens, causal=True).logits

    # --- generation -------------------------------------------------------------------------
    @torch.no_grad()
    def caption(
        self,
        pixel_values: torch.Tensor,
        prompt_ids: Sequence[int] | torch.Tensor | None = None,
        *,
        num_beams: int = 1,
        max_length: int = 30,
        min_length: int = 0,
    ) -> torch.Tensor:
        """Caption images [B, 3, H, W]: [B, T] generated ids after the prompt.

        The decoder starts from ``[DEC]`` + ``prompt_ids`` (word pieces without [CLS]/[SEP];
        default ``config.prompt_ids``, "a picture of " for the captioning presets) and runs greedy
        (``num_beams=1``) or beam search with a KV cache until ``[SEP]``. ``max_length`` and
        ``min_length`` count ``[DEC]`` and the prompt, as BLIP's ``generate`` passes them to
        transformers (BLIP_Decoder: 3 beams, max 30, min 10; the COCO config: max 20, min 5).
        Rows that end early carry ``[SEP]`` and then padding.
        """
        decoder = self._need("text_decoder", "caption")
        if self.config.decoder_reads != "image":
            raise InputError("this model's decoder reads a question encoding (VQA): use answer()")
        prompt = torch.as_tensor(
            self.config.prompt_ids if prompt_ids is None else prompt_ids, dtype=torch.long
        )
        if prompt.ndim != 1:
            raise InputError(
                f"prompt_ids must be one prompt [P] shared by the batch, got shape {tuple(prompt.shape)}"
            )
        image_tokens = self.encode_image(pixel_values)
        start = torch.tensor([[self.config.bos_token_id, *prompt.tolist()]], device=image_tokens.device)
        start = start.expand(image_tokens.shape[0], -1)
        ids = decoder.generate(
            start,
            image_tokens,
            eos_token_id=self.config.sep_token_id,
            max_length=max_length,
            min_length=min_length,
            num_beams=num_beams,
        )
        return ids[:, start.shape[1] :]

    def encode_question(
        self,
        image_tokens: torch.Tensor,
        question_ids: torch.Tensor,
        question_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[B, Lq, text width] question encoding: the image-grounded encoder on the question
        (first token ``[ENC]``, blip_vqa.py) cross-attending ``image_tokens`` [B, 1 + N, Cv]."""
        encoder = self._need("text_encoder", "the question encoder")
        ids = first_token(question_ids, self.config.enc_token_id)
        return encoder(ids, question_mask, context=image_tokens).tokens

    def _answer_decoder(self, what: str) -> MEDText:
        decoder = self._need("text_decoder", what)
        if self.config.decoder_reads != "question":
            raise InputError(f"{what} needs a VQA model (decoder_reads='question'), e.g. 'blip-base-vqa'")
        return decoder

    @torch.no_grad()
    def answer(
        self,
        pixel_values: torch.Tensor,
        question_ids: torch.Tensor,
        question_mask: torch.Tensor | None = None,
        *,
        num_beams: int = 1,
        max_length: int = 10,
        min_length: int = 1,
    ) -> torch.Tensor:
        """Answer questions [B, Lq] about images [B, 3, H, W] (generative VQA): [B, T] answer ids after ``[DEC]``.

        The answer decoder starts from ``[DEC]`` and cross-attends the question encoding, its
        padding masked with ``question_mask`` (blip_vqa.py's and transformers' ``generate`` attend
        to every question position, padding included: the same answers for unpadded questions).
        blip_vqa.py generates with 3 beams, ``max_length=10``, ``min_length=1``.
        """
        decoder = self._answer_decoder("answer")
        question = self.encode_question(self.encode_image(pixel_values), question_ids, question_mask)
        start = torch.full((question.shape[0], 1), self.config.bos_token_id, device=question.device)
        ids = decoder.generate(
            start,
            question,
            question_mask,
            eos_token_id=self.config.sep_token_id,
            max_length=max_length,
            min_length=min_length,
            num_beams=num_beams,
        )
        return ids[:, 1:]

    # --- losses -----------------------------------------------------------------------------
    def temperature(self) -> torch.Tensor:
        """The ITC temperature, clamped in place to [0.001, 0.5] first as BLIP does every step."""
        if self.temp is None:
            raise InputError(
                "this BLIP model has no ITC temperature (transformers' retrieval models drop it); "
                "build it with temperature=0.07, e.g. vlmzoo.create_model(name, temperature=0.07)"
            )
        with torch.no_grad():
            self.temp.clamp_(TEMP_MIN, TEMP_MAX)
        return self.temp

    def itc_loss(
        self, image_feat: torch.Tensor, text_feat: torch.Tensor, image_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """In-batch image-text contrastive loss of normalised features [B, D] (pair i = row i).

        ``sim = image_feat @ text_feat.T / temp``; the mean of image->text and text->image
        cross-entropy. With ``image_ids`` [B] the targets of a row are spread evenly over the
        texts of the same image (blip_retrieval.py's ``sim_targets``). No momentum distillation
        and no feature queues (the original's ``alpha`` soft targets and 57,600-long queues).
        """
        logits = image_feat @ text_feat.t() / self.temperature()
        if image_ids is None:
            return contrastive_loss(logits)
        same = (image_ids[:, None] == image_ids[None, :]).to(logits.dtype)
        targets = same / same.sum(dim=1, keepdim=True)
        i2t = -(F.log_softmax(logits, dim=1) * targets).sum(dim=1).mean()
        t2i = -(F.log_softmax(logits.t(), dim=1) * targets).sum(dim=1).mean()
        return (i2t + t2i) / 2

    @staticmethod
    @torch.no_grad()
    def hard_negatives(
        sim_i2t: torch.Tensor, generator: torch.Generator | None = None, image_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(negative image of each text [B], negative text of each image [B]) sampled from
        softmax(similarity) with the positives excluded (the diagonal, or every pair of the same
        ``image_ids``), as blip_retrieval.py: ``sim_i2t`` [B, B] = image_feat @ text_feat.T / temp.

        ``generator`` (on the similarities' device) makes the draw reproducible.
        """
        batch = sim_i2t.shape[0]
        if image_ids is None:
            positive = torch.eye(batch, dtype=torch.bool, device=sim_i2t.device)
        else:
            positive = image_ids[:, None] == image_ids[None, :]
        weights_t2i = F.softmax(sim_i2t.t().float(), dim=1).masked_fill(positive, 0)
        weights_i2t = F.softmax(sim_i2t.float(), dim=1).masked_fill(positive, 0)
        if bool((weights_i2t.sum(dim=1) <= 0).any()):
            raise InputError(
                "ITM hard negatives need, for every pair, another image in the batch (batch of >= 2)"
            )
        neg_image = torch.multinomial(weights_t2i, 1, generator=generator).squeeze(1)
        neg_text = torch.multinomial(weights_i2t, 1, generator=generator).squeeze(1)
        return neg_image, neg_text

    def itm_loss(
        self,
        image_tokens: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        sim_i2t: torch.Tensor,
        generator: torch.Generator | None = None,
        image_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Image-text matching loss with hard negatives: B positive pairs, then each text with a
        sampled negative image and each image with a sampled negative text (:meth:`hard_negatives`),
        cross-entropy over the 3B pairs (labels 1, then 0).

        ``image_tokens`` [B, 1 + N, Cv]; ``input_ids`` / ``attention_mask`` [B, L]; ``sim_i2t`` [B, B].
        """
        neg_image, neg_text = self.hard_negatives(sim_i2t.detach(), generator, image_ids)
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        ids = torch.cat([input_ids, input_ids, input_ids[neg_text]])
        masks = torch.cat([mask, mask, mask[neg_text]])
        images = torch.cat([image_tokens, image_tokens[neg_image], image_tokens])
        logits = self.itm_logits(images, ids, masks)
        batch = input_ids.shape[0]
        labels = torch.cat([torch.ones(batch), torch.zeros(2 * batch)]).long().to(logits.device)
        return F.cross_entropy(logits.float(), labels)

    def lm_loss(
        self,
        image_tokens: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        prompt_length: int | None = None,
    ) -> torch.Tensor:
        """Captioning LM loss: the decoder (``[DEC]`` first) predicts each next token, label
        smoothing ``config.label_smoothing``, padding and the first ``prompt_length`` positions not
        scored (default ``config.prompt_length``: ``[DEC]`` + the prompt, blip.py ``BLIP_Decoder``).

        ``image_tokens`` [B, 1 + N, Cv]; ``input_ids`` [B, L] the prompt + caption as tokenized.
        """
        skip = self.config.prompt_length if prompt_length is None else prompt_length
        logits = self.decoder_logits(image_tokens, input_ids, attention_mask)
        targets = lm_targets(first_token(input_ids, self.config.bos_token_id), self._pad_id, skip)
        return shifted_lm_loss(logits, targets, self.config.label_smoothing)

    @property
    def _pad_id(self) -> int:
        part = self.text_decoder if self.text_decoder is not None else self.text_encoder
        return part.config.pad_token_id

    def answer_loss(
        self,
        pixel_values: torch.Tensor,
        question_ids: torch.Tensor,
        question_mask: torch.Tensor | None,
        answer_ids: torch.Tensor,
        answer_mask: torch.Tensor | None = None,
        answers_per_question: Sequence[int] | torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """BLIP's VQA loss (blip_vqa.py ``train=True``): images [B, 3, H, W], questions [B, Lq];
        answers [A, La], ``answers_per_question`` [B] (sum A; default one each) and answer
        ``weights`` [A] (default 1). Each answer's LM loss is summed over its tokens (label
        smoothing as configured), weighted, summed and divided by B."""
        decoder = self._answer_decoder("answer_loss")
        batch = question_ids.shape[0]
        counts = torch.ones(batch, dtype=torch.long) if answers_per_question is None else answers_per_question
        counts = torch.as_tensor(counts, dtype=torch.long, device=question_ids.device)
        if counts.shape != (batch,) or int(counts.sum()) != answer_ids.shape[0] or bool((counts < 1).any()):
            raise InputError(
                f"answers_per_question must give a count >= 1 for each of the {batch} questions, "
                f"summing to the {answer_ids.shape[0]} answers; got {counts.tolist()}"
            )
        question = self.encode_question(self.encode_image(pixel_values), question_ids, question_mask)
        question = question.repeat_interleave(counts, dim=0)
        q_mask = question_mask.repeat_interleave(counts, dim=0) if question_mask is not None else None
        ids = first_token(answer_ids, self.config.bos_token_id)
        logits = decoder(ids, answer_mask, context=question, context_mask=q_mask, causal=True).logits
        targets = lm_targets(ids, decoder.config.pad_token_id)
        per_answer = shifted_lm_loss(logits, targets, self.config.label_smoothing, per_sequence=True)
        if weights is not None:
            per_answer = per_answer * weights.to(per_answer.dtype)
        return per_answer.sum() / batch

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        image_ids: torch.Tensor | None = None,
        prompt_length: int | None = None,
    ) -> BLIPOutput:
        """The training objectives this model has, on images [B, 3, H, W] and their texts [B, L]
        (as tokenized, [CLS] first): ITC and ITM with retrieval heads, LM with a captioning
        decoder; ``loss`` is their sum (pretraining's L_itc + L_itm + L_lm).

        ``generator`` draws the ITM hard negatives; ``image_ids`` [B] marks texts of the same
        image (never drawn as negatives, shared ITC targets); ``prompt_length`` as in :meth:`lm_loss`.
        VQA models train with :meth:`answer_loss`.
        """
        if self.config.decoder_reads == "question":
            raise InputError(
                "a VQA model trains with answer_loss(pixel_values, question_ids, ..., answer_ids)"
            )
        image_tokens = self.encode_image(pixel_values)
        itc = itm = lm = None
        if self.config.retrieval_heads:
            image_feat = self.image_embeds(image_tokens)
            text_feat = self.text_embeds(input_ids, attention_mask)
            itc = self.itc_loss(image_feat, text_feat, image_ids)
            sim_i2t = image_feat @ text_feat.t() / self.temp  # clamped by itc_loss
            itm = self.itm_loss(image_tokens, input_ids, attention_mask, sim_i2t, generator, image_ids)
        if self.text_decoder is not None:
            lm = self.lm_loss(image_tokens, input_ids, attention_mask, prompt_length)
        loss = sum(x for x in (itc, itm, lm) if x is not None)
        return BLIPOutput(loss=loss, itc=itc, itm=itm, lm=lm)  # type: ignore[arg-type]


# --- presets --------------------------------------------------------------------------------
def _vision(size: str, image_size: int) -> ViTConfig:
    return BLIP_VISION_PRESETS[f"blip-vit-{size}"].replace(image_size=image_size)


def _med(context_dim: int, lm_head: bool = False) -> MEDConfig:
    """bert-base MED (configs/med_config.json) cross-attending a ``context_dim``-wide context."""
    return MEDConfig(context_dim=context_dim, lm_head=lm_head)


def blip_pretrain_config(size: str, image_size: int = 224) -> BLIPConfig:
    """BLIP pretraining (blip_pretrain.py: 224 px, all heads, decoder tied to the encoder)."""
    vision = _vision(size, image_size)
    w = vision.width
    return BLIPConfig(vision, _med(w), _med(w, True), tie_decoder=True)


def blip_caption_config(size: str, image_size: int = 384) -> BLIPConfig:
    """A BLIP captioner (blip.py ``BLIP_Decoder``, "a picture of " prompt)."""
    vision = _vision(size, image_size)
    return BLIPConfig(
        vision, None, _med(vision.width, True), retrieval_heads=False, temperature=None, prompt_ids=PICTURE_OF
    )


def blip_retrieval_config(size: str, image_size: int = 384) -> BLIPConfig:
    """A BLIP image-text matcher (blip_itm.py ``BLIP_ITM``); no temperature, as transformers holds it."""
    vision = _vision(size, image_size)
    return BLIPConfig(vision, _med(vision.width), None, temperature=None)


def blip_vqa_config(size: str, image_size: int = 384) -> BLIPConfig:
    """BLIP VQA (blip_vqa.py: drop path 0.1; the original fine-tunes at 480 px, transformers' 384)."""
    vision = _vision(size, image_size).replace(drop_path_rate=0.1)
    text = _med(vision.width)
    return BLIPConfig(
        vision,
        text,
        _med(text.width, True),
        decoder_reads="question",
        retrieval_heads=False,
        temperature=None,
    )


_TINY_VISION = BLIP_VISION_PRESETS["blip-vit-tiny"]
_TINY_TEXT = MEDConfig(
    vocab_size=128, width=32, depth=2, num_heads=4, mlp_dim=64, max_positions=64, context_dim=48
)
_TINY_IDS = dict(bos_token_id=126, enc_token_id=127, sep_token_id=102)

BLIP_PRESETS: dict[str, tuple[BLIPConfig, str]] = {
    "blip-base": (blip_pretrain_config("b16"), "BLIP pretraining, ViT-B/16 (ITC + ITM + LM, tied decoder)"),
    "blip-large": (blip_pretrain_config("l16"), "BLIP pretraining, ViT-L/16 (ITC + ITM + LM, tied decoder)"),
    "blip-base-caption": (
        blip_caption_config("b16"),
        "BLIP captioner, ViT-B/16 (Salesforce/blip-image-captioning-base)",
    ),
    "blip-large-caption": (
        blip_caption_config("l16"),
        "BLIP captioner, ViT-L/16 (Salesforce/blip-image-captioning-large)",
    ),
    "blip-base-retrieval": (
        blip_retrieval_config("b16"),
        "BLIP ITC/ITM, ViT-B/16 (Salesforce/blip-itm-base-coco)",
    ),
    "blip-large-retrieval": (
        blip_retrieval_config("l16"),
        "BLIP ITC/ITM, ViT-L/16 (Salesforce/blip-itm-large-coco)",
    ),
    "blip-base-vqa": (blip_vqa_config("b16"), "BLIP generative VQA, ViT-B/16 (Salesforce/blip-vqa-base)"),
    "tiny-blip": (
        BLIPConfig(_TINY_VISION, _TINY_TEXT, _TINY_TEXT.replace(lm_head=True), tie_decoder=True, **_TINY_IDS),
        "tiny BLIP pretraining model for tests",
    ),
    "tiny-blip-caption": (
        BLIPConfig(
            _TINY_VISION,
            None,
            _TINY_TEXT.replace(lm_head=True),
            retrieval_heads=False,
            temperature=None,
            prompt_ids=(5, 6, 7),
            **_TINY_IDS,
        ),
        "tiny BLIP captioner for tests",
    ),
    "tiny-blip-retrieval": (
        BLIPConfig(_TINY_VISION, _TINY_TEXT, None, **_TINY_IDS),
        "tiny BLIP ITC/ITM model for tests",
    ),
    "tiny-blip-vqa": (
        BLIPConfig(
            _TINY_VISION,
            _TINY_TEXT,
            _TINY_TEXT.replace(lm_head=True, context_dim=_TINY_TEXT.width),
            decoder_reads="question",
            retrieval_heads=False,
            temperature=None,
            **_TINY_IDS,
        ),
        "tiny BLIP VQA model for tests",
    ),
}

for _name, (_cfg, _description) in BLIP_PRESETS.items():
    register(_name, "model", _cfg, BLIPModel, _description)
