"""Write the golden fixtures of tests/test_golden.py from the OFFICIAL AdaCLIP and APRIL-GAN code.

Never run by CI. Needs local checkouts of the two official repositories (their code is imported
at run time from there, never copied here):

    python scripts/make_golden_fixtures.py --adaclip /path/to/AdaCLIP --aprilgan /path/to/VAND-APRIL-GAN
    python scripts/make_golden_fixtures.py --anomalib-python /path/to/anomalib-venv/bin/python
    python scripts/make_golden_fixtures.py --anomalyclip /path/to/AnomalyCLIP
    python scripts/make_golden_fixtures.py --patchcore /path/to/patchcore-inspection \
        --patchcore-python /path/to/faiss-venv/bin/python

    python scripts/make_golden_fixtures.py --padim-python /path/to/anomalib-venv/bin/python

(any subset of them). PaDiM has no official code; its reference is anomalib's ``PadimModel``, which
follows the widely used reference implementation. PatchCore's worker runs in a venv with faiss-cpu (its nearest-neighbour
search) on a random WideResNet-50 that both sides build from the same state dict. WinCLIP's reference is anomalib's ``WinClipModel``, run by the Python of a
separate virtual environment holding anomalib and an open_clip older than 2.26.1 (under open_clip 3.x
its window embeddings are wrong); that worker imports neither clipad_lib nor this venv's open_clip.

Both run on shared seeded random weights:

* CLIP: ``build_clip(MODEL, init_seed=CLIP_SEED)`` (a random open_clip CLIP whose state dict has the
  OpenAI key names), every tensor rounded to fp16 precision (``w.half().float()``) so that the
  official loaders' fp16 round trip (``build_model_from_openai_state_dict``) is lossless, saved as a
  plain state dict (``load_openai_model`` falls back to ``torch.load`` when ``torch.jit.load`` fails);
  their download functions are monkeypatched to return that file.
* the learnable tensors: :func:`official_checkpoint` draws them from a seed in the official layout
  (the tests rebuild them with the same function and check their digest).

Each official code base runs in its own subprocess (they vendor modules named ``open_clip``,
``loss``, ``model``, ``dataset`` that clash with each other and with the installed open_clip).
Run-time patches (recorded in each fixture's metadata): AdaCLIP's ``PromptLayer.forward_text`` /
``forward_visual`` run with ``Tensor.half`` made the identity (its fp16 cast of the prompt tokens);
APRIL-GAN's ``VisionTransformer.forward`` runs with ``Tensor.to('cuda')`` sent to the CPU. Both run
on CPU in fp32, where their ``torch.cuda.amp.autocast`` is inactive.

AnomalyCLIP (zqhang/AnomalyCLIP): ``AnomalyCLIP_lib.load(<the shared weights file>)`` as its test.py
(the file path is accepted as is: no download), ``AnomalyCLIP_PromptLearner`` loaded strictly from the
official-layout checkpoint, ``DAPM_replace`` and the per-image inference of its test.py restated.
It runs at ViT-B-16's native 224 px (its bilinear positional-embedding resize is not clipad's
bicubic one; see the method's docstring), with ``DPAM_layer`` = ``ANOMALYCLIP['dpam_blocks'] + 1``
(test.py's fixed 20 needs 20 blocks). Run-time patches: empty stand-ins for the modules ``thop``
(imported, never used) and ``pkg_resources`` (only its ``packaging``, given the installed one);
``torch.jit.load`` raising inside ``AnomalyCLIP_lib.load``, so that it takes its own state-dict branch.
Its deep prompts are drawn at fp16 precision, so its ``.half()`` cast of them is lossless on CPU.

WinCLIP (anomalib): ``open_clip.create_model_and_transforms`` is wrapped to build the architecture
without weights and load the shared ``build_clip(WINCLIP_MODEL, init_seed=CLIP_SEED)`` state dict
(fp16-rounded like the others) strictly; images go in already normalized (``apply_transform=False``,
anomalib's default). Large stages are stored on a fixed subset (``WINCLIP['stride']``) to keep the
fixture small; the window scores and patch-grid maps are stored whole.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

MODEL = "ViT-B-16"
CLIP_SEED = 0
ROUNDING = "fp16"  # every CLIP tensor w -> w.half().float()
IMAGE_SIZE = 240   # not ViT-B-16's native 224: the positional-embedding resize and the GELU rule matter
LAYERS = (3, 6, 9, 12)
WIDTH, EMBED_DIM = 768, 512
IMAGE_SEED = 1
CLASS_NAMES = {"adaclip": ("metal-nut", "bottle"),  # a hyphen: AdaCLIP reads it as a space
               "aprilgan": ("metal_nut", "metal_nut")}  # MVTec's folder name; one class keeps the test fast
MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI's, as both official transforms use
STD = (0.26862954, 0.26130258, 0.27577711)
ADACLIP = {"prompt_length": 5, "prompt_depth": 4, "hsf_clusters": 20, "sigma": 4.0, "seed": 2, "kmeans_seed": 0}
APRILGAN = {"seed": 3}
WINCLIP_MODEL = "ViT-B-16-plus-240"  # anomalib's BACKBONE (its pretrained tag laion400m_e31 is replaced)
WINCLIP = {"image_size": 240, "class_name": "bottle", "scales": [2, 3], "reference_seed": 4, "k_shot": 1,
           "stride": 5,        # every 5th window / patch of the embedding stages is stored
           "pixel_stride": 3}  # rows and columns 0, 3, ..., 237 and 239 of the maps (all 16 bilinear phases)
ANOMALYCLIP = {"image_size": 224, "layers": [3, 6, 9, 12], "prompt_length": 12, "deep_prompt_depth": 9,
               "deep_prompt_length": 4, "dpam_blocks": 9, "sigma": 4, "seed": 5, "image_seed": 6,
               "projection_width": 896}  # its unused compound_prompt_projections: Linear(width, 896)
ANOMALYCLIP_SENTENCES = ("object.", "damaged object.")  # after prompt_length placeholder words "X"
# PatchCore (amazon-science/patchcore-inspection): its README's MVTec settings on a random WRN-50, no
# coreset (IdentitySampler: its approximate coreset draws from numpy's global RNG, ours from a seeded
# torch generator, so the two memories could not be compared) -- the features, the 1-NN scores, the map.
PATCHCORE = {"backbone": "wide_resnet50_2", "init_seed": 5, "image_size": 224, "layers": ["layer2", "layer3"],
             "pretrain_embed_dimension": 1024, "target_embed_dimension": 1024, "patchsize": 3,
             "anomaly_score_num_nn": 1, "train_seed": 6, "test_seed": 7, "feature_rows": 64}
# PaDiM: anomalib's PadimModel (the reference implementation's recipe) on a random ResNet-18 at 128 px;
# its channel draw (torch.randperm) is read back and given to ours, the rest of the pipeline compared.
PADIM = {"backbone": "resnet18", "init_seed": 8, "image_size": 128, "layers": ["layer1", "layer2", "layer3"],
         "n_features": 100, "train_seeds": [9, 10], "test_seed": 11}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "golden"


# -- what the tests rebuild too (no official code needed) -------------------------------------

def clip_state_dict(model_name: str = MODEL, init_seed: int = CLIP_SEED) -> dict[str, torch.Tensor]:
    """The shared CLIP weights: clipad's seeded random init, rounded to fp16 precision."""
    from clipad_lib.backbones import build_clip

    backbone = build_clip(model_name, init_seed=init_seed)
    return {k: v.detach().half().float().contiguous() for k, v in backbone.model.state_dict().items()}


def state_digest(state_dict: dict) -> str:
    """sha256 over the sorted keys, shapes and float32 bytes."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        value = state_dict[key].detach().to(torch.float32).contiguous()
        digest.update(key.encode() + str(tuple(value.shape)).encode() + value.numpy().tobytes())
    return digest.hexdigest()


def official_layout(method: str) -> list[tuple[str, tuple[int, ...], str]]:
    """(key, shape, kind) of the official checkpoint's tensors, in drawing order."""
    if method == "adaclip":
        length, depth = ADACLIP["prompt_length"], ADACLIP["prompt_depth"]
        rows = [(f"clip_model.text_prompter.static_prompts.{i}", (length, EMBED_DIM), "prompt") for i in range(depth)]
        rows += [(f"clip_model.visual_prompter.static_prompts.{i}", (length, WIDTH), "prompt") for i in range(depth)]
        linears = [(f"clip_model.patch_token_layer.head.{i}", WIDTH, EMBED_DIM) for i in range(len(LAYERS))]
        linears += [("clip_model.cls_token_layer.head.0", EMBED_DIM, EMBED_DIM)]
        linears += [(f"clip_model.dynamic_visual_prompt_generator.head.{i}", EMBED_DIM, WIDTH) for i in range(length)]
        linears += [(f"clip_model.dynamic_text_prompt_generator.head.{i}", EMBED_DIM, EMBED_DIM) for i in range(length)]
    elif method == "aprilgan":
        rows = []
        linears = [(f"fc.{i}", WIDTH, EMBED_DIM) for i in range(len(LAYERS))]
    elif method == "anomalyclip":  # the learnable tensors of its AnomalyCLIP_PromptLearner (text width 512)
        settings, text_width = ANOMALYCLIP, EMBED_DIM
        context = (1, 1, settings["prompt_length"], text_width)
        rows = [("ctx_pos", context, "prompt"), ("ctx_neg", context, "prompt")]
        rows += [(f"compound_prompts_text.{i}", (settings["deep_prompt_length"], text_width), "prompt")
                 for i in range(settings["deep_prompt_depth"] - 1)]
        linears = [(f"compound_prompt_projections.{i}", text_width, settings["projection_width"])
                   for i in range(settings["deep_prompt_depth"] - 1)]
    else:
        raise ValueError(method)
    for name, fan_in, fan_out in linears:
        rows += [(f"{name}.weight", (fan_out, fan_in), "weight"), (f"{name}.bias", (fan_out,), "bias")]
    return rows


def official_checkpoint(method: str, seed: int, clip_state: dict | None = None) -> dict:
    """Seeded random learnable tensors in the official checkpoint format (prompts N(0, 0.02²) as the
    official init; linear weights N(0, 1/fan_in); biases N(0, 0.02²)).

    AnomalyCLIP's checkpoint also holds its prompt learner's frozen buffers, made here from
    ``clip_state`` (the shared CLIP) as its ``__init__`` makes them: see :func:`anomalyclip_buffers`;
    its prompts are rounded to fp16 precision (its text blocks cast the deep prompts with ``.half()``).
    """
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, shape, kind in official_layout(method):
        scale = shape[1] ** -0.5 if kind == "weight" else 0.02
        tensors[key] = torch.randn(shape, generator=generator) * scale
        if method == "anomalyclip" and kind == "prompt":
            tensors[key] = tensors[key].half().float()
    if method == "anomalyclip":
        if clip_state is None:
            raise ValueError("the AnomalyCLIP checkpoint needs clip_state for its frozen buffers")
        return {"prompt_learner": {**tensors, **anomalyclip_buffers(clip_state)}}
    return {"trainable_linearlayer": tensors} if method == "aprilgan" else tensors


def anomalyclip_buffers(clip_state: dict) -> dict[str, torch.Tensor]:
    """AnomalyCLIP_PromptLearner's buffers: the token ids [1, 1, 77] of "X X ... X object." and
    "X ... X damaged object." and their token embeddings before (prefix, [1, 1, 1, W]) and after
    (suffix) the placeholder words, looked up in ``clip_state['token_embedding.weight']`` with
    open_clip's tokenizer (the worker checks that the official code makes the same)."""
    import open_clip

    length = ANOMALYCLIP["prompt_length"]
    tokenizer = open_clip.get_tokenizer(MODEL)
    table = clip_state["token_embedding.weight"]
    buffers = {}
    for state, sentence in zip(("pos", "neg"), ANOMALYCLIP_SENTENCES):
        tokens = tokenizer([" ".join(["X"] * length + [sentence])])  # [1, 77]
        embedding = table[tokens]  # [1, 77, W]
        buffers[f"token_prefix_{state}"] = embedding[None, :, :1].clone()
        buffers[f"token_suffix_{state}"] = embedding[None, :, 1 + length:].clone()
        buffers[f"tokenized_prompts_{state}"] = tokens[None].to(torch.int32)
    return buffers


def images_uint8(seed: int = IMAGE_SEED, size: int = IMAGE_SIZE, block: int = 8) -> np.ndarray:
    """[2, S, S, 3] uint8: random colours in blocks of ``block`` pixels (seeded; half a ViT-B-16 patch,
    so every patch differs and the fixture compresses)."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, (2, size // block, size // block, 3), dtype=np.uint8)
    return np.ascontiguousarray(cells.repeat(block, axis=1).repeat(block, axis=2))


def normalize_images(images: np.ndarray, mean=MEAN, std=STD) -> torch.Tensor:
    """uint8 [B, S, S, 3] -> float32 [B, 3, S, S] with ``mean`` and ``std`` (default: OpenAI's)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).to(torch.float32) / 255.0
    return ((x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]).contiguous()


def cnn_state_dict(model_name: str = PATCHCORE["backbone"], init_seed: int = PATCHCORE["init_seed"],
                   image_size: int = PATCHCORE["image_size"]) -> dict:
    """The shared CNN weights: clipad's seeded random init of the timm ResNet (torchvision's keys)."""
    from clipad_lib.backbones.timm_cnn import build_cnn_backbone

    backbone = build_cnn_backbone(model_name, None, image_size, init_seed=init_seed)
    return {k: v.detach().clone().contiguous() for k, v in backbone.model.state_dict().items()}


def winclip_pixels(size: int = WINCLIP["image_size"], stride: int = WINCLIP["pixel_stride"]) -> np.ndarray:
    """The map rows and columns the WinCLIP fixture stores."""
    return np.unique(np.r_[np.arange(0, size, stride), size - 1])


def winclip_subset(count: int, stride: int = WINCLIP["stride"]) -> np.ndarray:
    """The windows / patches the WinCLIP fixture stores embeddings of (the last one included)."""
    return np.unique(np.r_[np.arange(0, count, stride), count - 1])


# -- workers: one official code base each, in a subprocess ------------------------------------

class _Patched:
    """Temporarily set ``owner.name = value``."""

    def __init__(self, owner, name, value):
        self.owner, self.name, self.value = owner, name, value

    def __enter__(self):
        self.saved = getattr(self.owner, self.name)
        setattr(self.owner, self.name, self.value)

    def __exit__(self, *exc):
        setattr(self.owner, self.name, self.saved)


def _wrap(owner, name, context):
    """Replace method ``owner.name`` by one running the original inside ``context()``."""
    original = getattr(owner, name)

    def wrapped(*args, **kwargs):
        with context():
            return original(*args, **kwargs)

    setattr(owner, name, wrapped)


def official_adaclip_trainer(repo: Path, work: Path):
    """The official ``AdaCLIP_Trainer`` on ``work``'s shared weights (``clip.pt``) and checkpoint
    (``adaclip_official.pth``), with the run-time patches of the module docstring; every learnable
    tensor checked to have arrived. Also what ``scripts/bench_eval.py --official-adaclip`` times."""
    sys.path.insert(0, str(repo))
    import method.custom_clip as custom_clip
    import method.adaclip as official
    from method import AdaCLIP_Trainer

    weights = str(work / "clip.pt")
    custom_clip.download_pretrained = lambda cfg, *a, **k: weights  # no download: the shared weights
    for name in ("forward_text", "forward_visual"):  # neutralise the fp16 cast of the prompt tokens
        _wrap(official.PromptLayer, name, lambda: _Patched(torch.Tensor, "half", lambda self: self))
    trainer = AdaCLIP_Trainer(backbone=MODEL, feat_list=list(LAYERS), input_dim=WIDTH, output_dim=EMBED_DIM,
                              learning_rate=0.0, device="cpu", image_size=IMAGE_SIZE,
                              prompting_depth=ADACLIP["prompt_depth"], prompting_length=ADACLIP["prompt_length"],
                              prompting_branch="VL", prompting_type="SD", use_hsf=True,
                              k_clusters=ADACLIP["hsf_clusters"])
    checkpoint = work / "adaclip_official.pth"
    trainer.load(str(checkpoint))  # the official load (strict=False): check every tensor arrived
    state, expected = trainer.state_dict(), torch.load(checkpoint)
    learnable = {k for k in state if any(n in k for n in trainer.learnable_paramter_list)}
    assert learnable == set(expected), sorted(learnable ^ set(expected))
    assert all(torch.equal(state[k], v) for k, v in expected.items())
    trainer.clip_model.eval()
    return trainer


def _adaclip_timing_worker(repo: Path, work: Path, count: int, threads: int) -> None:
    """For ``scripts/bench_eval.py --official-adaclip``: the official AdaCLIP on ``count`` images of
    ``work/images.pt`` at batch size 1 (its only one), after one warm-up; prints one JSON line."""
    import time
    import types

    import packaging

    torch.set_num_threads(threads)
    # The same allocator setting as the workbook's side (clipad_lib/host_memory.py, loaded alone so
    # that this worker imports nothing else of clipad_lib; CLIPAD_REUSE_FREED_MEMORY=0 turns both off).
    import importlib.util

    spec = importlib.util.spec_from_file_location("host_memory", Path(__file__).resolve().parents[1] / "clipad_lib" / "host_memory.py")
    host_memory = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(host_memory)
    reused = host_memory.reuse_freed_memory()
    # Its adaclip.py imports pkg_resources for packaging.version only; setuptools >= 81 has none.
    sys.modules.setdefault("pkg_resources", types.SimpleNamespace(packaging=packaging))
    trainer = official_adaclip_trainer(repo, work)
    images = torch.load(work / "images.pt")
    name = CLASS_NAMES["adaclip"][0]
    with torch.no_grad():
        trainer.clip_model(images[:1], [name], aggregation=True)
        start = time.perf_counter()
        for i in range(count):
            trainer.clip_model(images[i:i + 1], [name], aggregation=True)
        elapsed = time.perf_counter() - start
    print(json.dumps({"images_per_s": count / elapsed, "seconds": elapsed, "images": count,
                      "reuse_freed_memory": reused}))


def _adaclip_worker(repo: Path, work: Path) -> None:
    sys.path.insert(0, str(repo))
    import method.adaclip as official
    from scipy.ndimage import gaussian_filter

    record: dict[str, list] = {"text": [], "image_embedding": [], "layer_logits": [], "hsf": [], "labels": []}
    similarity = official.AdaCLIP.visual_text_similarity

    def visual_text_similarity(self, image_feature, patch_token, text_feature, aggregation):
        record["text"].append(text_feature.detach().clone())
        record["image_embedding"].append(image_feature.detach().clone())
        return similarity(self, image_feature, patch_token, text_feature, aggregation)

    official.AdaCLIP.visual_text_similarity = visual_text_similarity
    hsf_forward = official.HybridSemanticFusion.forward

    def hsf(self, patch_tokens, anomaly_maps):
        record["layer_logits"].append([m.detach().clone() for m in anomaly_maps])
        fit_predict = self.cluster_performer.fit_predict

        def labelled(data):
            labels = fit_predict(data)
            record["labels"].append(np.asarray(labels))
            return labels

        with _Patched(self.cluster_performer, "fit_predict", labelled):
            out = hsf_forward(self, patch_tokens, anomaly_maps)
        record["hsf"].append(out.detach().clone())
        return out

    official.HybridSemanticFusion.forward = hsf

    trainer = official_adaclip_trainer(repo, work)
    state = trainer.state_dict()
    clip_state = torch.load(work / "clip.pt")
    frozen = {k[len("clip_model.freeze_clip."):]: v for k, v in state.items() if k.startswith("clip_model.freeze_clip.")}
    resized = [k for k in clip_state if k in frozen and not torch.equal(frozen[k].float(), clip_state[k])]
    assert resized == ["visual.positional_embedding"], resized

    images = torch.load(work / "images.pt")
    maps, scores = [], []
    with torch.no_grad():
        for i, name in enumerate(CLASS_NAMES["adaclip"]):  # the official code runs batch size 1 (dynamic text prompts)
            np.random.seed(ADACLIP["kmeans_seed"] + i)  # its KMeans has no random_state: fix numpy's
            anomaly_map, score = trainer.clip_model(images[i:i + 1], [name], aggregation=True)
            maps.append(anomaly_map[0].float().numpy())
            scores.append(float(score[0]))
    raw = np.stack(maps)
    smoothed = np.stack([gaussian_filter(m, sigma=ADACLIP["sigma"]) for m in raw])  # as its test/trainer code
    out = {
        "text": torch.cat(record["text"]).transpose(1, 2).numpy(),  # [B, 2, D] (normal, abnormal)
        "image_embedding": torch.cat(record["image_embedding"]).numpy(),
        "hsf_embedding": torch.cat(record["hsf"]).numpy(),
        "hsf_labels": np.stack(record["labels"]).astype(np.int64),
        "image_score": np.array(scores, dtype=np.float32),
        "map_raw": raw.astype(np.float32),
        "map_smoothed": smoothed.astype(np.float32),
        "positional_embedding": frozen["visual.positional_embedding"].float().numpy(),
    }
    for j in range(len(LAYERS)):
        out[f"layer_logits_{j}"] = torch.cat([r[j] for r in record["layer_logits"]]).numpy()
    np.savez(work / "adaclip_out.npz", **out)


def _aprilgan_worker(repo: Path, work: Path) -> None:
    sys.path.insert(0, str(repo))
    import open_clip  # the vendored one
    assert Path(open_clip.__file__).resolve().is_relative_to(repo.resolve()), open_clip.__file__
    import open_clip.openai as openai_loader
    import open_clip.transformer as transformer
    import torch.nn.functional as F
    from model import LinearLayer
    from prompt_ensemble import encode_text_with_prompt_ensemble

    weights = str(work / "clip.pt")
    openai_loader.download_pretrained_from_url = lambda url, *a, **k: weights
    to = torch.Tensor.to

    def cpu_to(self, *args, **kwargs):  # its VisionTransformer.forward sends a tensor to 'cuda' unconditionally
        args = tuple("cpu" if a == "cuda" else a for a in args)
        return to(self, *args, **kwargs)

    _wrap(transformer.VisionTransformer, "forward", lambda: _Patched(torch.Tensor, "to", cpu_to))

    model, _, _ = open_clip.create_model_and_transforms(MODEL, IMAGE_SIZE, pretrained="openai")
    model.eval()
    tokenizer = open_clip.get_tokenizer(MODEL)
    linear = LinearLayer(WIDTH, EMBED_DIM, len(LAYERS), MODEL)
    linear.load_state_dict(torch.load(work / "aprilgan_official.pth")["trainable_linearlayer"])  # strict
    gelu = {type(m).__name__ for m in model.visual.modules() if "GELU" in type(m).__name__}
    images = torch.load(work / "images.pt")
    texts, scores, maps, logits = [], [], [], [[] for _ in LAYERS]
    with torch.no_grad():
        prompts = encode_text_with_prompt_ensemble(model, sorted(set(CLASS_NAMES["aprilgan"])), tokenizer, "cpu")
        # The per-image inference of its test.py (zero-shot), restated: its loop needs a dataset on disk.
        for i, name in enumerate(CLASS_NAMES["aprilgan"]):
            image_features, patch_tokens = model.encode_image(images[i:i + 1], list(LAYERS))
            image_features = image_features / image_features.norm(dim=-1, keepdim=True)
            text = prompts[name][None]  # [1, D, 2]
            texts.append(text.transpose(1, 2))
            scores.append(float((100.0 * image_features @ text[0]).softmax(dim=-1)[0, 1]))
            layer_maps = []
            for j, tokens in enumerate(linear(patch_tokens)):
                tokens = tokens / tokens.norm(dim=-1, keepdim=True)
                layer_logits = 100.0 * tokens @ text
                logits[j].append(layer_logits)
                b, n, c = layer_logits.shape
                h = int(np.sqrt(n))
                up = F.interpolate(layer_logits.permute(0, 2, 1).view(b, c, h, h), size=IMAGE_SIZE,
                                   mode="bilinear", align_corners=True)
                layer_maps.append(torch.softmax(up, dim=1)[:, 1].numpy())
            maps.append(np.sum(layer_maps, axis=0)[0])
    out = {"text": torch.cat(texts).numpy(), "image_score": np.array(scores, dtype=np.float32),
           "map": np.stack(maps).astype(np.float32), "gelu": np.array(sorted(gelu)),
           "positional_embedding": model.visual.positional_embedding.detach().float().numpy()}
    for j in range(len(LAYERS)):
        out[f"layer_logits_{j}"] = torch.cat(logits[j]).numpy()
    np.savez(work / "aprilgan_out.npz", **out)


def _anomalyclip_worker(repo: Path, work: Path) -> None:
    import types

    import packaging.version

    sys.path.insert(0, str(repo))
    # Its modules import thop (never used) and pkg_resources (for packaging.version only), which
    # this venv lacks: stand-ins, recorded in the fixture's metadata.
    sys.modules.setdefault("thop", types.SimpleNamespace(profile=None))
    sys.modules.setdefault("pkg_resources", types.SimpleNamespace(packaging=packaging))
    import AnomalyCLIP_lib
    from prompt_ensemble import AnomalyCLIP_PromptLearner
    from scipy.ndimage import gaussian_filter

    settings = ANOMALYCLIP
    parameters = {"Prompt_length": settings["prompt_length"],
                  "learnabel_text_embedding_depth": settings["deep_prompt_depth"],
                  "learnabel_text_embedding_length": settings["deep_prompt_length"]}
    def not_torchscript(*args, **kwargs):  # its fallback to torch.load re-reads a file jit.load has consumed
        raise RuntimeError("not a TorchScript archive")

    # test.py's setup, on the shared weights (a file path: no download), loaded as a state dict
    with _Patched(torch.jit, "load", not_torchscript):
        model, _ = AnomalyCLIP_lib.load(str(work / "clip.pt"), device="cpu", design_details=parameters)
    model.eval()
    prompt_learner = AnomalyCLIP_PromptLearner(model.to("cpu"), parameters)
    own = {k: v.clone() for k, v in prompt_learner.state_dict().items() if k.startswith(("token", "tokenized"))}
    checkpoint = torch.load(work / "anomalyclip_official.pth")
    prompt_learner.load_state_dict(checkpoint["prompt_learner"])  # strict, as its test.py
    for key, value in own.items():  # the buffers its __init__ made are the ones the checkpoint holds
        assert value.dtype == checkpoint["prompt_learner"][key].dtype, key
        assert torch.equal(value, checkpoint["prompt_learner"][key]), key
    model.visual.DAPM_replace(DPAM_layer=settings["dpam_blocks"] + 1)
    gelu = sorted({type(m).__name__ for m in model.modules() if "GELU" in type(m).__name__})

    with torch.no_grad():
        prompts, tokenized_prompts, compound_prompts_text = prompt_learner(cls_id=None)
        text_features = model.encode_text_learn(prompts, tokenized_prompts, compound_prompts_text).float()
        text_features = torch.stack(torch.chunk(text_features, dim=0, chunks=2), dim=1)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)  # [1, 2, D]
        images = torch.load(work / "anomalyclip_images.pt")
        size = images.shape[-1]
        embeddings, scores, raw, smoothed = [], [], [], []
        similarities = [[] for _ in settings["layers"]]
        for i in range(len(images)):  # its test.py: batch size 1
            image_features, patch_features = model.encode_image(images[i:i + 1], settings["layers"],
                                                                DPAM_layer=settings["dpam_blocks"] + 1)
            image_features = image_features / image_features.norm(dim=-1, keepdim=True)
            embeddings.append(image_features)
            text_probs = (image_features @ text_features.permute(0, 2, 1) / 0.07).softmax(-1)
            scores.append(float(text_probs[:, 0, 1]))
            anomaly_map_list = []
            for j, patch_feature in enumerate(patch_features):
                patch_feature = patch_feature / patch_feature.norm(dim=-1, keepdim=True)
                similarity, _ = AnomalyCLIP_lib.compute_similarity(patch_feature, text_features[0])
                similarities[j].append(similarity[:, 1:, :])
                similarity_map = AnomalyCLIP_lib.get_similarity_map(similarity[:, 1:, :], size)
                anomaly_map_list.append((similarity_map[..., 1] + 1 - similarity_map[..., 0]) / 2.0)
            anomaly_map = torch.stack(anomaly_map_list).sum(dim=0)
            raw.append(anomaly_map[0].numpy())
            smoothed.append(gaussian_filter(anomaly_map[0].numpy(), sigma=settings["sigma"]))
    out = {"text": text_features[0].numpy(), "image_embedding": torch.cat(embeddings).numpy(),
           "image_score": np.array(scores, dtype=np.float32), "map_raw": np.stack(raw).astype(np.float32),
           "map_smoothed": np.stack(smoothed).astype(np.float32), "gelu": np.array(gelu)}
    for j in range(len(settings["layers"])):
        out[f"patch_probabilities_{j}"] = torch.cat(similarities[j]).numpy()
    np.savez(work / "anomalyclip_out.npz", **out)


def _anomalyclip(repo: Path, work: Path, out: Path, command: str, commit: str) -> None:
    """The official AnomalyCLIP code, in a subprocess on the shared weights -> anomalyclip.npz."""
    settings = ANOMALYCLIP
    clip = clip_state_dict()
    torch.save(clip, work / "clip.pt")
    images = images_uint8(settings["image_seed"], settings["image_size"])
    torch.save(normalize_images(images), work / "anomalyclip_images.pt")
    checkpoint = official_checkpoint("anomalyclip", settings["seed"], clip)
    torch.save(checkpoint, work / "anomalyclip_official.pth")
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", "anomalyclip",
                    "--anomalyclip", str(repo.resolve()), "--work", str(work)], check=True)
    result = dict(np.load(work / "anomalyclip_out.npz"))
    import scipy
    meta = {"method": "anomalyclip", "model": MODEL, "init_seed": CLIP_SEED, "rounding": ROUNDING,
            "clip_sha256": state_digest(clip), "mean": list(MEAN), "std": list(STD), "command": command,
            "torch": torch.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
            "official_commit": commit, "checkpoint_seed": settings["seed"],
            "checkpoint_sha256": state_digest(checkpoint["prompt_learner"]), **settings,
            "sentences": list(ANOMALYCLIP_SENTENCES), "gelu": result.pop("gelu").tolist(),
            "patches": ["sys.modules['thop'] = a stand-in (imported by AnomalyCLIP_lib/AnomalyCLIP.py, unused)",
                        "sys.modules['pkg_resources'] = a stand-in holding the installed packaging",
                        "torch.jit.load raises RuntimeError inside AnomalyCLIP_lib.load, so it takes its own "
                        "state-dict branch (its fallback re-reads a file object jit.load has consumed)"],
            "dpam": "model.visual.DAPM_replace(DPAM_layer=dpam_blocks + 1), encode_image(..., DPAM_layer="
                    "dpam_blocks + 1) (test.py's 20 needs 20 blocks)",
            "precision": "fp32 on CPU; prompts drawn at fp16 precision (its .half() of the deep prompts lossless)",
            "inference": "its test.py per-image loop, restated in this script (its loop needs a dataset on disk)",
            "resolution": "native 224 px: no positional-embedding resize on either side",
            "smoothing": "scipy.ndimage.gaussian_filter(sigma=4) per map, as its test.py"}
    result["images"] = images
    np.savez_compressed(out / "anomalyclip.npz", meta=np.array(json.dumps(meta, sort_keys=True)), **result)
    print(f"wrote {out / 'anomalyclip.npz'} ({(out / 'anomalyclip.npz').stat().st_size} bytes)")


def _patchcore_worker(repo: Path, work: Path) -> None:
    """Runs inside the PatchCore venv (faiss): its PatchCore on the shared WRN-50 -> patchcore_out.npz."""
    sys.path.insert(0, str(repo / "src"))
    import torchvision

    import patchcore.common
    import patchcore.patchcore
    import patchcore.sampler

    settings = PATCHCORE
    backbone = torchvision.models.wide_resnet50_2(weights=None)
    backbone.load_state_dict(torch.load(work / "patchcore_wrn50.pt", weights_only=True), strict=True)
    backbone.eval()
    train, test = torch.load(work / "patchcore_train.pt"), torch.load(work / "patchcore_test.pt")
    size = settings["image_size"]
    model = patchcore.patchcore.PatchCore("cpu")
    model.load(backbone=backbone, layers_to_extract_from=settings["layers"], device="cpu", input_shape=(3, size, size),
               pretrain_embed_dimension=settings["pretrain_embed_dimension"],
               target_embed_dimension=settings["target_embed_dimension"], patchsize=settings["patchsize"],
               anomaly_score_num_nn=settings["anomaly_score_num_nn"],
               featuresampler=patchcore.sampler.IdentitySampler(), nn_method=patchcore.common.FaissNN(False, 1))
    model.fit([train])
    features = np.asarray(model._embed(test))  # [B * h * w, D] (its _embed returns a list of rows)
    patch_scores = model.anomaly_scorer.predict([features])[0]
    image_scores, maps = model.predict(test)
    np.savez(work / "patchcore_out.npz", features=np.asarray(features[:settings["feature_rows"]]),
             patch_scores=np.asarray(patch_scores), image_scores=np.asarray(image_scores),
             maps=np.stack([np.asarray(m) for m in maps]))
    import faiss
    (work / "patchcore_versions.json").write_text(json.dumps({"faiss": faiss.__version__,
                                                              "torchvision": torchvision.__version__}))


def _patchcore(repo: Path, python: Path, work: Path, out: Path, command: str, commit: str) -> None:
    """The official PatchCore code, run by ``python`` (a venv with faiss) on the shared WRN-50 -> patchcore.npz."""
    settings = PATCHCORE
    weights = cnn_state_dict()
    torch.save(weights, work / "patchcore_wrn50.pt")
    size = settings["image_size"]
    train_images, test_images = images_uint8(settings["train_seed"], size), images_uint8(settings["test_seed"], size)
    torch.save(normalize_images(train_images, IMAGENET_MEAN, IMAGENET_STD), work / "patchcore_train.pt")
    torch.save(normalize_images(test_images, IMAGENET_MEAN, IMAGENET_STD), work / "patchcore_test.pt")
    subprocess.run([str(python), str(Path(__file__).resolve()), "--worker", "patchcore", "--patchcore",
                    str(repo.resolve()), "--work", str(work)], check=True)
    result = dict(np.load(work / "patchcore_out.npz"))
    versions = json.loads((work / "patchcore_versions.json").read_text())
    meta = {"method": "patchcore", **settings, "weights_sha256": state_digest(weights), "official_commit": commit,
            "command": command, "torch": torch.__version__, "numpy": np.__version__, **versions,
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "official": "patchcore.patchcore.PatchCore.load(...) with IdentitySampler and FaissNN(on_gpu=False)",
            "weights": "torchvision wide_resnet50_2(weights=None).load_state_dict(clipad's timm random init, "
                       "strict=True): the two share key names",
            "inputs": "images normalized here with ImageNet's mean/std, fed at 224 px (its resize/crop bypassed)",
            "stored": "features: the first feature_rows rows of _embed(test); patch_scores: the 1-NN squared L2 "
                      "distances of every test patch; image_scores and maps: PatchCore.predict(test)"}
    result["train_images"], result["test_images"] = train_images, test_images
    np.savez_compressed(out / "patchcore.npz", meta=np.array(json.dumps(meta, sort_keys=True)), **result)
    print(f"wrote {out / 'patchcore.npz'} ({(out / 'patchcore.npz').stat().st_size} bytes)")


def padim_images(settings: dict = PADIM) -> tuple[np.ndarray, np.ndarray]:
    """(train [4, S, S, 3], test [2, S, S, 3]) uint8 images of the PaDiM fixture."""
    size = settings["image_size"]
    train = np.concatenate([images_uint8(seed, size) for seed in settings["train_seeds"]])
    return train, images_uint8(settings["test_seed"], size)


def _padim_worker(work: Path) -> None:
    """Runs inside a venv with anomalib: its PadimModel on the shared ResNet -> padim_out.npz."""
    from anomalib.models.image.padim.torch_model import PadimModel

    settings = PADIM
    model = PadimModel(backbone=settings["backbone"], layers=settings["layers"], pre_trained=False,
                       n_features=settings["n_features"])
    weights = torch.load(work / "padim_resnet.pt", weights_only=True)
    extractor = model.feature_extractor.feature_extractor  # timm's features_only net: up to layer3, no classifier
    extractor.load_state_dict({k: v for k, v in weights.items() if k in extractor.state_dict()}, strict=True)
    train, test = torch.load(work / "padim_train.pt"), torch.load(work / "padim_test.pt")
    model.train()
    model.feature_extractor.eval()  # frozen ImageNet statistics, as the reference code's model.eval()
    with torch.no_grad():
        model(train)
        model.fit()
        model.eval()
        output = model(test)
        embedding = model.generate_embedding(model.feature_extractor(test))
        distance = model.anomaly_map_generator.compute_distance(
            embedding, [model.gaussian.mean, model.gaussian.inv_covariance])
    np.savez(work / "padim_out.npz", idx=model.idx.numpy(), embedding=embedding.numpy(),
             distance=distance[:, 0].numpy(), maps=output.anomaly_map[:, 0].numpy(),
             image_scores=output.pred_score.numpy())
    import anomalib
    (work / "padim_versions.json").write_text(json.dumps({"anomalib": anomalib.__version__}))


def _padim(python: Path, work: Path, out: Path, command: str) -> None:
    """anomalib's PaDiM, run by ``python`` (a venv with anomalib) on the shared ResNet -> padim.npz."""
    settings = PADIM
    weights = cnn_state_dict(settings["backbone"], settings["init_seed"], settings["image_size"])
    torch.save(weights, work / "padim_resnet.pt")
    train_images, test_images = padim_images()
    torch.save(normalize_images(train_images, IMAGENET_MEAN, IMAGENET_STD), work / "padim_train.pt")
    torch.save(normalize_images(test_images, IMAGENET_MEAN, IMAGENET_STD), work / "padim_test.pt")
    subprocess.run([str(python), str(Path(__file__).resolve()), "--worker", "padim", "--work", str(work)], check=True)
    result = dict(np.load(work / "padim_out.npz"))
    versions = json.loads((work / "padim_versions.json").read_text())
    meta = {"method": "padim", **settings, "weights_sha256": state_digest(weights), "command": command,
            "torch": torch.__version__, "numpy": np.__version__, **versions,
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "official": "anomalib.models.image.padim.torch_model.PadimModel (pre_trained=False, weights loaded)",
            "patches": ["model.feature_extractor.eval() after model.train(): the backbone's batch norm keeps "
                        "its running statistics while the memory bank fills"],
            "smoothing": "anomalib's GaussianBlur2d(sigma=4, kernel 33, torch 'reflect' padding) = clipad's "
                         "smoothing_boundary='mirror'",
            "stored": "idx: anomalib's channel draw; embedding, distance (before upsampling), maps, image_scores"}
    result["train_images"], result["test_images"] = train_images, test_images
    np.savez_compressed(out / "padim.npz", meta=np.array(json.dumps(meta, sort_keys=True)), **result)
    print(f"wrote {out / 'padim.npz'} ({(out / 'padim.npz').stat().st_size} bytes)")


def _winclip_worker(work: Path) -> None:
    """Runs under the anomalib venv's Python: imports anomalib and its open_clip, never clipad_lib."""
    from importlib import metadata

    import open_clip
    import torch.nn.functional as F
    from anomalib.models.image.winclip import torch_model
    from anomalib.models.image.winclip.utils import class_scores, harmonic_aggregation

    create = open_clip.create_model_and_transforms
    loaded = {}

    def shared_weights(model_name, pretrained=None, *args, **kwargs):
        assert (model_name, pretrained) == (WINCLIP_MODEL, "laion400m_e31"), (model_name, pretrained)
        model, train_transform, transform = create(model_name, *args, pretrained=None, **kwargs)
        state = torch.load(work / "winclip_clip.pt")
        loaded["result"] = str(model.load_state_dict(state, strict=True))  # every key, every shape
        return model, train_transform, transform

    open_clip.create_model_and_transforms = shared_weights
    assert torch_model.open_clip is open_clip
    images, references = torch.load(work / "winclip_images.pt"), torch.load(work / "winclip_references.pt")
    model = torch_model.WinClipModel(class_name=WINCLIP["class_name"], scales=tuple(WINCLIP["scales"]))
    model.eval()
    assert "result" in loaded and not model.apply_transform and tuple(model.grid_size) == (15, 15)
    rows = torch.as_tensor(winclip_pixels())
    pixels = lambda maps: maps[:, rows][:, :, rows]  # noqa: E731
    out = {"text_raw": model.text_embeddings.numpy()}  # [2, D] raw means (normal, anomalous)
    with torch.no_grad():
        image_embedding, window_embeddings, patch_embeddings = model.encode_image(images)
        out["image_embedding"] = image_embedding.numpy()
        out["patch_embeddings"] = patch_embeddings[:, winclip_subset(patch_embeddings.shape[1])].numpy()
        image_scores = class_scores(image_embedding, model.text_embeddings, model.temperature, target_class=1)
        out["zero_shot_image_score"] = image_scores.numpy()
        for scale, embedding, masks in zip(WINCLIP["scales"], window_embeddings, model.masks):
            out[f"window_embeddings_{scale}"] = embedding[:, winclip_subset(embedding.shape[1])].numpy()
            scores = class_scores(embedding, model.text_embeddings, model.temperature, target_class=1)
            out[f"window_scores_{scale}"] = scores.numpy()
            out[f"scale_map_{scale}"] = harmonic_aggregation(scores, model.grid_size, masks).numpy()
        out["zero_shot_score_map"] = model._compute_zero_shot_scores(image_scores, window_embeddings).numpy()
        zero_shot = model(images)
        out["zero_shot_map"] = pixels(zero_shot.anomaly_map).numpy()
        out["zero_shot_score"] = zero_shot.pred_score.numpy()

        model.setup(reference_images=references)  # WinCLIP+: k-shot
        assert model.k_shot == WINCLIP["k_shot"]
        out["few_shot_map_grid"] = model._compute_few_shot_scores(patch_embeddings, window_embeddings).numpy()
        few_shot = model(images)
        out["few_shot_map"] = pixels(few_shot.anomaly_map).numpy()
        out["few_shot_score"] = few_shot.pred_score.numpy()
        # the map before upsampling, restated from forward(): (zero-shot + few-shot) / 2
        out["few_shot_score_map"] = ((torch.from_numpy(out["zero_shot_score_map"])
                                      + torch.from_numpy(out["few_shot_map_grid"])) / 2).numpy()
        # forward's interpolation (mode='bilinear', align_corners unset = False), checked once here
        grid = torch.from_numpy(out["zero_shot_score_map"])[:, None]
        assert torch.equal(F.interpolate(grid, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0],
                           zero_shot.anomaly_map)
    np.savez(work / "winclip_out.npz", **out)
    versions = {"anomalib": metadata.version("anomalib"), "open_clip_torch": metadata.version("open_clip_torch"),
                "torch_in_anomalib_venv": torch.__version__, "python_in_anomalib_venv": sys.version.split()[0],
                "load_state_dict": loaded["result"], "anomalib_python": sys.executable}
    (work / "winclip_versions.json").write_text(json.dumps(versions))


# -- main -------------------------------------------------------------------------------------

def _commit(repo: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except Exception:
        return "unknown"


def _winclip(python: Path, work: Path, out: Path, command: str) -> None:
    """anomalib's WinCLIP, run by ``python`` (the anomalib venv) on the shared weights -> winclip.npz."""
    clip = clip_state_dict(WINCLIP_MODEL, CLIP_SEED)
    torch.save(clip, work / "winclip_clip.pt")
    size = WINCLIP["image_size"]
    images = images_uint8(IMAGE_SEED, size)
    references = images_uint8(WINCLIP["reference_seed"], size)[:WINCLIP["k_shot"]]
    torch.save(normalize_images(images), work / "winclip_images.pt")
    torch.save(normalize_images(references), work / "winclip_references.pt")
    subprocess.run([str(python), str(Path(__file__).resolve()), "--worker", "winclip", "--work", str(work)],
                   check=True)
    result = dict(np.load(work / "winclip_out.npz"))
    versions = json.loads((work / "winclip_versions.json").read_text())
    meta = {"method": "winclip", "model": WINCLIP_MODEL, "init_seed": CLIP_SEED, "rounding": ROUNDING,
            "clip_sha256": state_digest(clip), "image_seed": IMAGE_SEED, "mean": list(MEAN), "std": list(STD),
            "command": command, "torch": torch.__version__, "numpy": np.__version__, **WINCLIP, **versions,
            "official": "anomalib.models.image.winclip.torch_model.WinClipModel",
            "patches": ["open_clip.create_model_and_transforms: pretrained='laion400m_e31' -> None, then "
                        "load_state_dict(shared weights, strict=True)"],
            "inputs": "images normalized here with OpenAI's mean/std (apply_transform=False: anomalib's "
                      "transform bypassed)",
            "precision": "fp32 on CPU",
            "stored": "text_raw: anomalib's raw (unnormalized) prompt means; patch_embeddings: ln_post output, "
                      "not projected (open_clip<2.26.1 output_tokens); window/patch embeddings at "
                      "winclip_subset(count), maps at winclip_pixels() rows and columns; few_shot_score_map "
                      "restated as (zero-shot + few-shot grid) / 2 as in forward()"}
    result["images"], result["references"] = images, references
    np.savez_compressed(out / "winclip.npz", meta=np.array(json.dumps(meta, sort_keys=True)), **result)
    print(f"wrote {out / 'winclip.npz'} ({(out / 'winclip.npz').stat().st_size} bytes)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adaclip", type=Path, help="checkout of github.com/caoyunkang/AdaCLIP")
    parser.add_argument("--aprilgan", type=Path, help="checkout of github.com/ByChelsea/VAND-APRIL-GAN")
    parser.add_argument("--adaclip-commit", help="commit id of the AdaCLIP checkout (default: git rev-parse)")
    parser.add_argument("--aprilgan-commit", help="commit id of the APRIL-GAN checkout (default: git rev-parse)")
    parser.add_argument("--anomalyclip", type=Path, help="checkout of github.com/zqhang/AnomalyCLIP")
    parser.add_argument("--anomalyclip-commit", help="commit id of the AnomalyCLIP checkout (default: git rev-parse)")
    parser.add_argument("--anomalib-python", type=Path,
                        help="Python of a venv with anomalib and open_clip_torch<2.26.1 (writes winclip.npz)")
    parser.add_argument("--patchcore", type=Path, help="checkout of github.com/amazon-science/patchcore-inspection")
    parser.add_argument("--patchcore-commit", help="commit id of the PatchCore checkout (default: git rev-parse)")
    parser.add_argument("--patchcore-python", type=Path, default=Path(sys.executable),
                        help="Python of a venv with faiss-cpu, torchvision and scikit-learn (default: this one)")
    parser.add_argument("--padim-python", type=Path, help="Python of a venv with anomalib (writes padim.npz)")
    parser.add_argument("--out", type=Path, default=FIXTURES)
    parser.add_argument("--timing-images", type=int, default=8, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=("adaclip", "aprilgan", "winclip", "anomalyclip", "patchcore", "padim",
                                             "adaclip_timing"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker == "winclip":
        _winclip_worker(args.work)
        return
    if args.worker == "adaclip_timing":
        os.chdir(args.adaclip)
        _adaclip_timing_worker(args.adaclip.resolve(), args.work, args.timing_images, args.threads)
        return
    if args.worker == "padim":
        _padim_worker(args.work)
        return
    if args.worker == "patchcore":
        _patchcore_worker(args.patchcore.resolve(), args.work)
        return
    if args.worker == "anomalyclip":
        os.chdir(args.anomalyclip)
        _anomalyclip_worker(args.anomalyclip.resolve(), args.work)
        return
    if args.worker:
        repo = args.adaclip if args.worker == "adaclip" else args.aprilgan
        os.chdir(repo)
        (_adaclip_worker if args.worker == "adaclip" else _aprilgan_worker)(repo.resolve(), args.work)
        return
    if not (args.adaclip or args.aprilgan or args.anomalib_python or args.anomalyclip or args.patchcore
            or args.padim_python):
        parser.error("give --adaclip, --aprilgan, --anomalyclip, --patchcore, --padim-python and/or --anomalib-python")
    command = " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)])
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="golden-") as tmp:
        work = Path(tmp)
        if args.anomalib_python:
            _winclip(args.anomalib_python, work, args.out, command)
        if args.padim_python:
            _padim(args.padim_python, work, args.out, command)
        if args.patchcore:
            _patchcore(args.patchcore, args.patchcore_python, work, args.out, command,
                       args.patchcore_commit or _commit(args.patchcore))
        if args.anomalyclip:
            _anomalyclip(args.anomalyclip, work, args.out, command,
                         args.anomalyclip_commit or _commit(args.anomalyclip))
        if not (args.adaclip or args.aprilgan):
            return
        clip = clip_state_dict()
        torch.save(clip, work / "clip.pt")
        images = images_uint8()
        torch.save(normalize_images(images), work / "images.pt")
        common = {"model": MODEL, "init_seed": CLIP_SEED, "rounding": ROUNDING, "clip_sha256": state_digest(clip),
                  "image_size": IMAGE_SIZE, "layers": list(LAYERS),
                  "image_seed": IMAGE_SEED, "mean": list(MEAN), "std": list(STD), "command": command,
                  "torch": torch.__version__, "numpy": np.__version__}
        for method, repo in (("adaclip", args.adaclip), ("aprilgan", args.aprilgan)):
            if repo is None:
                continue
            settings = ADACLIP if method == "adaclip" else APRILGAN
            checkpoint = official_checkpoint(method, settings["seed"])
            torch.save(checkpoint, work / f"{method}_official.pth")
            flat = checkpoint.get("trainable_linearlayer", checkpoint)
            subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", method,
                            f"--{method}", str(repo.resolve()), "--work", str(work)], check=True)
            result = dict(np.load(work / f"{method}_out.npz"))
            commit = getattr(args, f"{method}_commit") or _commit(repo)
            meta = {**common, "method": method, "class_names": list(CLASS_NAMES[method]), "official_commit": commit,
                    "checkpoint_seed": settings["seed"], "checkpoint_sha256": state_digest(flat), **settings}
            if method == "adaclip":
                import scipy
                import sklearn
                meta.update(patches=["PromptLayer.forward_text/forward_visual: Tensor.half -> identity (its fp16 "
                                     "cast of the prompt tokens neutralised)"],
                            precision="fp32 on CPU (its torch.cuda.amp.autocast inactive)",
                            kmeans="official sklearn KMeans(n_clusters=20, n_init='auto'), np.random.seed(kmeans_seed + i)"
                                   " before image i; labels stored as hsf_labels",
                            smoothing="scipy.ndimage.gaussian_filter(sigma=4) per map, as its test code",
                            scipy=scipy.__version__, sklearn=sklearn.__version__)
            else:
                meta.update(patches=["VisionTransformer.forward: Tensor.to('cuda') -> 'cpu'"],
                            precision="fp32 on CPU (its torch.cuda.amp.autocast inactive)",
                            inference="zero-shot per-image loop of its test.py, restated in this script",
                            gelu=result.pop("gelu").tolist(), smoothing="none (its test.py does not smooth)")
            result.pop("gelu", None)
            result["images"] = images
            np.savez_compressed(args.out / f"{method}.npz", meta=np.array(json.dumps(meta, sort_keys=True)), **result)
            print(f"wrote {args.out / f'{method}.npz'} ({(args.out / f'{method}.npz').stat().st_size} bytes)")


if __name__ == "__main__":
    main()
