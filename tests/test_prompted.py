import pytest
import torch

from clipad_lib.backbones import BackboneError
from clipad_lib.backbones.clip import last_token_output
from clipad_lib.backbones.prompted import PromptConfig, PromptedCLIP, length_buckets

LAYERS = [2, 4, 8]


@pytest.fixture(scope="module")
def sentences(tiny_backbone):
    return tiny_backbone.tokenizer(["a photo of a flawless pill.", "a photo of a damaged pill."])


def test_no_prompts_reproduce_the_plain_open_clip_forward(tiny_backbone, sentences):
    images = torch.randn(2, 3, 64, 64)
    plain_tokens, plain_pooled = tiny_backbone.patch_tokens(images, LAYERS)
    for config in (PromptConfig(length=0), PromptConfig(static=False, dynamic=False),
                   PromptConfig(image=False, text=False)):
        prompted = PromptedCLIP(tiny_backbone, config)
        pooled, tokens = prompted.encode_image(images, LAYERS)
        torch.testing.assert_close(pooled, plain_pooled, rtol=0, atol=0)
        for ours, theirs in zip(tokens, plain_tokens):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
        # The text side drops the padding after the longest sentence: equal up to float summation order.
        torch.testing.assert_close(prompted.encode_text(sentences), tiny_backbone.model.encode_text(sentences),
                                   rtol=1e-5, atol=1e-6)
        assert not prompted.learnable_parameters()


def test_static_prompts_change_outputs_and_keep_shapes(tiny_backbone, sentences):
    torch.manual_seed(0)
    prompted = PromptedCLIP(tiny_backbone, PromptConfig(length=3, depth=2, dynamic=False))
    with torch.no_grad():
        for prompt in prompted.learnable_parameters():
            prompt.mul_(50)  # make the effect large enough to see on a random-init model
    images = torch.randn(2, 3, 64, 64)
    pooled, tokens = prompted.encode_image(images, LAYERS)
    plain_tokens, plain_pooled = tiny_backbone.patch_tokens(images, LAYERS)
    assert pooled.shape == plain_pooled.shape and [t.shape for t in tokens] == [t.shape for t in plain_tokens]
    assert not torch.allclose(tokens[-1], plain_tokens[-1])
    text = prompted.encode_text(sentences)
    assert text.shape == (2, 32) and not torch.allclose(text, tiny_backbone.model.encode_text(sentences))


def test_gradients_reach_prompts_but_never_the_frozen_backbone(tiny_backbone, sentences):
    prompted = PromptedCLIP(tiny_backbone, PromptConfig(length=2, depth=3))
    images = torch.randn(2, 3, 64, 64)
    source = prompted.frozen_image_embedding(images)
    pooled, tokens = prompted.encode_image(images, LAYERS, dynamic_source=source)
    text = prompted.encode_text(sentences, dynamic_source=source)
    (pooled.sum() + tokens[0].sum() + text.sum()).backward()
    assert all(p.grad is None for p in tiny_backbone.parameters())
    assert prompted.image_static[0].grad is not None and prompted.image_dynamic.head[0].weight.grad is not None
    assert prompted.text_static[1].grad is not None and prompted.text_dynamic.head[1].weight.grad is not None
    # The official text placement never uses the layer-0 text prompt.
    assert prompted.text_static[0].grad is None


def test_trimming_the_padding_changes_no_text_embedding(tiny_backbone, sentences):
    """Prompted text with the padding trimmed equals the same computation over the full context."""
    torch.manual_seed(1)
    for placement in ("official", "paper"):
        prompted = PromptedCLIP(tiny_backbone, PromptConfig(length=3, depth=3, dynamic=False, text_placement=placement))
        trimmed = prompted.encode_text(sentences)
        model = tiny_backbone.model
        x = model.token_embedding(sentences) + model.positional_embedding
        end = sentences.argmax(dim=-1)
        for index, block in enumerate(model.transformer.resblocks):
            if index < 3:
                prompts = prompted.text_static[index].unsqueeze(0).expand(len(sentences), -1, -1)
                if placement == "paper" and index == 0:
                    x = torch.cat([x[:, :1], prompts, x[:, 1:-3]], dim=1)
                elif index > 0:
                    x = torch.cat([x[:, :1], prompts, x[:, 4:]], dim=1)
            x = block(x, attn_mask=model.attn_mask)
        x = model.ln_final(x)
        full = x[torch.arange(len(sentences)), end + (3 if placement == "paper" else 0)] @ model.text_projection
        torch.testing.assert_close(trimmed, full, rtol=1e-5, atol=1e-6)


def test_paper_text_placement_uses_every_prompt(tiny_backbone, sentences):
    prompted = PromptedCLIP(tiny_backbone, PromptConfig(length=2, depth=3, dynamic=False, text_placement="paper"))
    prompted.encode_text(sentences).sum().backward()
    assert all(p.grad is not None for p in prompted.text_static)
    official = PromptedCLIP(tiny_backbone, PromptConfig(length=2, depth=3, dynamic=False))
    official.load_state_dict(prompted.state_dict())
    assert not torch.allclose(official.encode_text(sentences), prompted.encode_text(sentences))


def test_dynamic_text_prompts_give_one_text_embedding_set_per_image(tiny_backbone, sentences):
    prompted = PromptedCLIP(tiny_backbone, PromptConfig(length=2, depth=2, static=False, image=False))
    images = torch.randn(3, 3, 64, 64)
    text = prompted.encode_text(sentences, dynamic_source=prompted.frozen_image_embedding(images))
    assert text.shape == (3, 2, 32)
    assert not torch.allclose(text[0], text[1])
    with pytest.raises(BackboneError, match="dynamic prompts need"):
        prompted.encode_text(sentences)


def test_bad_prompt_settings(tiny_backbone):
    with pytest.raises(BackboneError, match="prompting depth 9 exceeds the 8 image layers"):
        PromptedCLIP(tiny_backbone, PromptConfig(depth=9))
    with pytest.raises(ValueError, match="text_placement"):
        PromptConfig(text_placement="middle")
    with pytest.raises(ValueError, match=">= 0"):
        PromptConfig(length=-1)


def test_length_buckets_minimise_padded_tokens():
    # Lengths 9, 9, 10, 14: one group pads all four to 14 (56 tokens); two split off the 14 (30 + 14 = 44);
    # three also split 10 from the 9s (18 + 10 + 14 = 42).
    assert length_buckets([9, 9, 10, 14], 1) == [[0, 1, 2, 3]]
    assert length_buckets([9, 14, 9, 10], 2) == [[0, 2, 3], [1]]
    assert length_buckets([9, 14, 9, 10], 3, min_saving=0) == [[0, 2], [3], [1]]
    # The third group saves 2 tokens, under a tenth of 56: not worth another pass through the tower.
    assert length_buckets([9, 14, 9, 10], 3) == [[0, 2, 3], [1]]
    # Never more groups than distinct lengths, and no split that saves nothing.
    assert length_buckets([5, 5, 5], 3, min_saving=0) == [[0, 1, 2]]
    with pytest.raises(ValueError, match="max_buckets must be >= 1"):
        length_buckets([5], 0)
    with pytest.raises(ValueError, match="at least one sentence"):
        length_buckets([])


def test_length_buckets_are_the_optimal_contiguous_split():
    """Against brute force over every split of the sorted lengths into at most k groups."""
    import itertools
    import random

    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(3, 12) for _ in range(rng.randint(1, 8))]
        k = rng.randint(1, 4)
        ordered = sorted(set(lengths))
        fewest = min(sum(sum(1 for n in lengths if low < n <= high) * high
                         for low, high in zip((0,) + bounds, bounds + (ordered[-1],)))
                     for groups in range(k) for bounds in itertools.combinations(ordered[:-1], groups))
        buckets = length_buckets(lengths, k, min_saving=0)
        assert sorted(i for b in buckets for i in b) == list(range(len(lengths)))
        assert sum(len(b) * max(lengths[i] for i in b) for b in buckets) == fewest


def test_length_buckets_change_no_text_embedding(tiny_backbone):
    """Sentences of very different lengths, run in groups cut to their own longest, give the same
    embeddings (and the same order) as one group cut to the longest of all."""
    sentences = tiny_backbone.tokenizer(["a pill.", "a photo of a flawless pill for visual inspection today.",
                                         "a cropped photo of a damaged pill.", "pill."])
    torch.manual_seed(2)
    images = torch.randn(3, 3, 64, 64)
    for placement in ("official", "paper"):
        prompted = PromptedCLIP(tiny_backbone, PromptConfig(length=3, depth=3, text_placement=placement))
        source = prompted.frozen_image_embedding(images)
        with torch.no_grad():
            one = prompted.encode_text(sentences, dynamic_source=source, max_buckets=1)
            grouped = prompted.encode_text(sentences, dynamic_source=source, max_buckets=3)
        assert grouped.shape == (3, 4, 32)
        torch.testing.assert_close(grouped, one, rtol=1e-5, atol=1e-5)  # embeddings of norm ~1-10: rounding
    plain = PromptedCLIP(tiny_backbone, PromptConfig(length=0))
    torch.testing.assert_close(plain.encode_text(sentences, max_buckets=3), tiny_backbone.model.encode_text(sentences),
                               rtol=1e-5, atol=1e-6)


def test_last_token_output_equals_the_whole_block_read_at_that_token(tiny_backbone):
    torch.manual_seed(3)
    text_block = tiny_backbone.model.transformer.resblocks[-1]
    x = torch.randn(5, 12, tiny_backbone.model.transformer.width)
    rows = torch.tensor([0, 3, 11, 7, 7])
    mask = tiny_backbone.model.attn_mask[:12, :12]
    with torch.no_grad():
        torch.testing.assert_close(last_token_output(text_block, x, rows, mask),
                                   text_block(x, attn_mask=mask)[torch.arange(5), rows], rtol=1e-5, atol=1e-5)
        image_block = tiny_backbone.image_blocks[-1]
        tokens = torch.randn(2, 17, tiny_backbone.width)
        torch.testing.assert_close(last_token_output(image_block, tokens, torch.zeros(2, dtype=torch.long)),
                                   image_block(tokens)[:, 0], rtol=1e-5, atol=1e-5)

    class Doubling(torch.nn.Module):  # not an open_clip block: run whole, then read
        def forward(self, x, attn_mask=None):
            return 2 * x

    assert torch.equal(last_token_output(Doubling(), x, rows), 2 * x[torch.arange(5), rows])
    # A boolean mask (True: not allowed) reads the same as the additive one.
    with torch.no_grad():
        torch.testing.assert_close(last_token_output(text_block, x, rows, torch.isinf(mask)),
                                   last_token_output(text_block, x, rows, mask), rtol=0, atol=0)
    # Gradients flow as through the whole block.
    x.requires_grad_(True)
    last_token_output(text_block, x, rows, mask).sum().backward()
    assert x.grad is not None and x.grad[0, 1:].abs().sum() == 0  # row 0 of sequence 0 sees only itself


def _full_context_prompted_text(prompted, sentences, source):
    """The official placement computed the slow way: every sentence over the whole context, every
    block whole, one copy of every sentence per image from the start. [B, P, D]."""
    model, config = prompted.backbone.model, prompted.config
    dynamic = prompted.text_dynamic(source)  # [B, length, width]
    images, count = len(source), len(sentences)
    x = model.token_embedding(sentences) + model.positional_embedding
    x = x.repeat(images, 1, 1)
    for index, block in enumerate(model.transformer.resblocks):
        if 0 < index < config.depth:
            prompts = prompted.text_static[index] + dynamic.repeat_interleave(count, dim=0)
            x = torch.cat([x[:, :1], prompts, x[:, 1 + config.length:]], dim=1)
        x = block(x, attn_mask=model.attn_mask)
    end = sentences.argmax(dim=-1).repeat(images)
    return (model.ln_final(x)[torch.arange(len(x)), end] @ model.text_projection).reshape(images, count, -1)


@pytest.mark.parametrize("depth", [1, 4])
def test_prompted_text_agrees_with_the_whole_context_when_prompts_reach_the_last_block_or_no_block(
        tiny_backbone, depth):
    """Depth 4 prompts the tiny tower's last text block (4 layers); depth 1 prompts none, so every
    block runs before the copies per image. Both against every block run whole on the full context."""
    torch.manual_seed(4)
    prompted = PromptedCLIP(tiny_backbone, PromptConfig(length=2, depth=depth))
    with torch.no_grad():
        for prompt in prompted.learnable_parameters():
            prompt.mul_(20)
    sentences = tiny_backbone.tokenizer(["a pill.", "a cropped photo of a damaged pill with a crack.", "pill."])
    source = prompted.frozen_image_embedding(torch.randn(2, 3, 64, 64))
    with torch.no_grad():
        fast = prompted.encode_text(sentences, dynamic_source=source)
        torch.testing.assert_close(fast, _full_context_prompted_text(prompted, sentences, source), rtol=1e-4, atol=1e-4)
