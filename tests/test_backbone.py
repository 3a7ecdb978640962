import numpy as np
import pytest
import torch

from clipad_lib.backbones import BackboneError, CheckpointError, build_clip
from clipad_lib.data.transforms import CLIP_MEAN, CLIP_STD, ImageTransform


def test_patch_tokens_shapes(tiny_backbone):
    images = torch.randn(2, 3, 64, 64)
    tokens, pooled = tiny_backbone.patch_tokens(images, [2, 4, 8])
    assert [t.shape for t in tokens] == [torch.Size([2, 64, 64])] * 3  # 8x8 patches of width 64
    assert pooled.shape == (2, 32)
    assert tiny_backbone.project_tokens(tokens[0]).shape == (2, 64, 32)
    assert tiny_backbone.encode_text(["a photo of a flawless pill", "a photo of a damaged pill"]).shape == (2, 32)


def test_last_layer_tokens_agree_with_the_plain_forward(tiny_backbone):
    images = torch.randn(1, 3, 64, 64)
    tokens, pooled = tiny_backbone.patch_tokens(images, [tiny_backbone.num_layers])
    visual = tiny_backbone.model.visual
    with torch.no_grad():
        expected = visual(images)
    torch.testing.assert_close(pooled, expected)
    assert tokens[0].shape[1] == tiny_backbone.grid_size ** 2


def test_image_embedding_computes_only_the_class_token_in_the_last_block_and_agrees(tiny_backbone, monkeypatch):
    from clipad_lib.backbones import clip

    rows_read = []
    real = clip.last_token_output
    monkeypatch.setattr(clip, "last_token_output", lambda block, x, rows, mask=None: (
        rows_read.append(rows.tolist()), real(block, x, rows, mask))[1])
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = tiny_backbone.model.encode_image(images)
        torch.testing.assert_close(tiny_backbone.encode_image(images, normalize=False), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(tiny_backbone.encode_image(images), torch.nn.functional.normalize(expected, dim=-1),
                                   rtol=1e-5, atol=1e-5)
    assert rows_read == [[0, 0, 0], [0, 0, 0]]  # the shortcut ran, on the class token of each image


def test_backbone_is_frozen(tiny_backbone):
    assert not any(p.requires_grad for p in tiny_backbone.parameters())
    tiny_backbone.train()
    assert not tiny_backbone.model.training


def test_bad_inputs_fail_clearly(tiny_backbone):
    with pytest.raises(BackboneError, match=r"layer indices \[9\] do not exist: .* layers 1..8"):
        tiny_backbone.patch_tokens(torch.randn(1, 3, 64, 64), [2, 9])
    with pytest.raises(BackboneError, match="takes 64x64 images, got 96x96"):
        tiny_backbone.patch_tokens(torch.randn(1, 3, 96, 96), [2])
    with pytest.raises(BackboneError, match=r"\[B, 3, H, W\]"):
        tiny_backbone.encode_image(torch.randn(3, 64, 64))
    with pytest.raises(BackboneError, match="unknown CLIP architecture"):
        build_clip("ViT-Q-99")
    with pytest.raises(BackboneError, match="neither a local checkpoint file nor a pretrained tag"):
        build_clip("ViT-B-16", pretrained="no-such-tag")


def test_local_checkpoint_round_trip_and_resize(tmp_path, tiny_backbone):
    path = tmp_path / "tiny.pt"
    torch.save(tiny_backbone.model.state_dict(), path)
    loaded = build_clip("clipad-tiny-ViT", pretrained=str(path), image_size=64)
    images = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(loaded.encode_image(images), tiny_backbone.encode_image(images))
    resized = build_clip("clipad-tiny-ViT", pretrained=str(path), image_size=96)  # positional embedding interpolated
    assert resized.patch_tokens(torch.randn(1, 3, 96, 96), [1])[0][0].shape == (1, 144, 64)


def test_positional_embedding_resize_is_bicubic_or_bilinear_as_asked(tmp_path, tiny_backbone):
    """AnomalyCLIP's code resizes bilinearly (align_corners=False, no antialias); open_clip bicubically."""
    path = tmp_path / "tiny.pt"
    torch.save(tiny_backbone.model.state_dict(), path)
    native = tiny_backbone.model.visual.positional_embedding.detach()  # [1 + 8 * 8, width]
    grid = native[1:].reshape(1, 8, 8, -1).permute(0, 3, 1, 2)
    for mode in ("bilinear", "bicubic"):
        resized = build_clip("clipad-tiny-ViT", str(path), 96, pos_embed_antialias=False, pos_embed_interpolation=mode)
        expected = torch.nn.functional.interpolate(grid, size=(12, 12), mode=mode, align_corners=False)
        torch.testing.assert_close(resized.model.visual.positional_embedding.detach(),
                                   torch.cat([native[:1], expected.permute(0, 2, 3, 1).reshape(144, -1)]))
        assert resized.protocol()["pos_embed_resize"] == f"{mode}, no antialias"
    with pytest.raises(BackboneError, match="pos_embed_interpolation must be one of"):
        build_clip("clipad-tiny-ViT", str(path), 96, pos_embed_interpolation="nearest")


def test_checkpoint_of_the_wrong_shape_names_the_tensor(tmp_path, tiny_backbone):
    state = dict(tiny_backbone.model.state_dict())
    state["visual.proj"] = torch.zeros(64, 16)
    del state["text_projection"]
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as error:
        build_clip("clipad-tiny-ViT", pretrained=str(path))
    message = str(error.value)
    assert "'visual.proj' has shape [64, 16] in the checkpoint but the model expects [64, 32]" in message
    assert "missing tensor 'text_projection'" in message
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="is not a checkpoint file"):
        build_clip("clipad-tiny-ViT", pretrained=str(garbage))


def test_positional_embeddings_of_the_wrong_width_are_named_not_asserted(tmp_path, tiny_backbone):
    # open_clip's resize would stop at `AssertionError: text pos_embed width changed!`.
    state = dict(tiny_backbone.model.state_dict())
    length, width = state["positional_embedding"].shape
    state["positional_embedding"] = torch.zeros(length, width + 8)
    tokens, visual_width = state["visual.positional_embedding"].shape
    state["visual.positional_embedding"] = torch.zeros(tokens, visual_width * 2)
    path = tmp_path / "wide.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as error:
        build_clip("clipad-tiny-ViT", pretrained=str(path))
    message = str(error.value)
    assert f"'positional_embedding' has shape [{length}, {width + 8}] in the checkpoint but the model expects " \
           f"[{length}, {width}]" in message
    assert f"'visual.positional_embedding' has shape [{tokens}, {visual_width * 2}]" in message
    # Only the length may differ: a shorter text context is resized, as before.
    state = dict(tiny_backbone.model.state_dict())
    state["positional_embedding"] = state["positional_embedding"][: length - 4].clone()
    torch.save(state, path)
    assert build_clip("clipad-tiny-ViT", pretrained=str(path)).model.positional_embedding.shape == (length, width)


class _RunsCode:
    """Unpickling this would run a shell command: the classic malicious checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_code_running_pickle_or_a_text_file_is_refused_saying_what_clipad_expects(tmp_path):
    from clipad_lib.backbones.checkpoint_files import read_checkpoint
    from clipad_lib.backbones.timm_vit import load_timm_checkpoint

    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"visual.proj": torch.zeros(2), "payload": _RunsCode(marker)}, evil)
    text = tmp_path / "notes.pt"
    text.write_text("these are not weights\n")
    for load in (read_checkpoint, lambda path: build_clip("clipad-tiny-ViT", pretrained=str(path)),
                 lambda path: load_timm_checkpoint(torch.nn.Linear(2, 2), path)):
        with pytest.raises(CheckpointError) as error:
            load(evil)
        message = str(error.value)
        assert "needs pickled code to load" in message and "posix.system" in message
        assert "never executes pickled code" in message and ".safetensors" in message
        assert "weights_only" not in message  # torch's advice to turn the check off is not passed on
        with pytest.raises(CheckpointError, match="is not a checkpoint file") as error:
            load(text)
        assert "state_dict()" in str(error.value)
    assert not marker.exists()


def test_transform_resizes_normalizes_and_keeps_masks_binary():
    transform = ImageTransform(size=32)
    image = np.full((50, 70, 3), 255, np.uint8)
    tensor = transform.image(image)
    assert tensor.shape == (3, 32, 32)
    expected = (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(tensor[:, 0, 0], expected)
    mask = np.zeros((50, 70), bool)
    mask[10:30, 20:50] = True
    resized = transform.mask(mask)
    assert resized.dtype == torch.bool and resized.shape == (32, 32) and 0 < resized.sum() < 32 * 32
    assert not transform.mask(None).any()
    assert transform.describe()["interpolation"] == "bicubic"
    torch.testing.assert_close(transform.unnormalize(tensor[None])[0, 0, 0], torch.ones(3))


def _register_test_tag(monkeypatch):
    """A pretrained tag of the tiny architecture whose weights live in a Hugging Face repo id."""
    import open_clip.pretrained as pretrained

    tags = {"clipad_test": pretrained._pcfg(hf_hub="clipad-test/tiny-clip/")}
    monkeypatch.setitem(pretrained._PRETRAINED, "clipad-tiny-ViT", tags)


def _fill_hf_cache(cache, state_dict):
    """Lay out a Hugging Face cache holding the repo's weights, as a completed download leaves it."""
    repo = cache / "models--clipad-test--tiny-clip"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    torch.save(state_dict, repo / "snapshots" / commit / "open_clip_pytorch_model.bin")


def test_pretrained_tag_loads_from_the_weights_cache_offline(tmp_path, monkeypatch, tiny_backbone):
    _register_test_tag(monkeypatch)
    monkeypatch.setenv("CLIPAD_WEIGHTS", str(tmp_path / "weights"))
    with pytest.raises(BackboneError, match="put the weights in the cache first"):
        build_clip("clipad-tiny-ViT", pretrained="clipad_test", image_size=64)
    _fill_hf_cache(tmp_path / "weights", tiny_backbone.model.state_dict())
    loaded = build_clip("clipad-tiny-ViT", pretrained="clipad_test", image_size=64)
    images = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(loaded.encode_image(images), tiny_backbone.encode_image(images))


def test_random_init_is_a_function_of_the_seed_only():
    torch.manual_seed(123)
    first = build_clip("clipad-tiny-ViT", image_size=64)
    state = torch.get_rng_state()
    torch.manual_seed(999)
    second = build_clip("clipad-tiny-ViT", image_size=64)
    other = build_clip("clipad-tiny-ViT", image_size=64, init_seed=1)
    for key, value in first.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[key]), key
    assert not torch.equal(first.model.visual.proj, other.model.visual.proj)
    torch.manual_seed(123)
    build_clip("clipad-tiny-ViT", image_size=64)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is untouched
