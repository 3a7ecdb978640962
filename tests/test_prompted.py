import pytest
import torch

from clipad_lib.backbones import BackboneError
from clipad_lib.backbones.prompted import PromptConfig, PromptedCLIP

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
