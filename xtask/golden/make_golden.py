#!/usr/bin/env python3
"""Generate the golden parity fixtures for dinov2-rs from Hugging Face transformers.

Every case is a tiny, randomly initialised model written as a model directory (config.json plus
safetensors weights, exactly as transformers saves it) together with inputs and the expected outputs
of transformers running that model in float64 (eager attention, eval mode):

    <out>/<case>/config.json, model.safetensors (or an index + shards)
    <out>/<case>/runs.json                      list of runs (see README.md in the output folder)
    <out>/<case>/<run>.inputs.safetensors       pixel_values f32 [B,3,H,W], bool_masked_pos u8, labels
    <out>/<case>/<run>.expected.safetensors     float64 outputs of transformers

Pinned references: transformers 5.17.0 + torch 2.11.0 (requirements-5.17.txt) for every case but
`legacy_444`, which is written with `--legacy` under transformers 4.44.2 + torch 2.11.0
(requirements-4.44.txt): the last release that resized position embeddings with
`scale_factor=(g+0.1)/M`.

Usage (from anywhere; the default output folder is <repo>/tests/fixtures/golden):
    python make_golden.py [--out DIR]            # all 5.17 cases
    python make_golden.py --legacy [--out DIR]   # legacy_444 only, under transformers 4.44.2
    python make_golden.py --only a,b [--out DIR] # only cases a and b
or simply `cargo xtask golden --python ... --legacy-python ...` from the repository root.

Deterministic: every case and run draws from its own torch.Generator seeded from its name; torch runs
single-threaded. Only the case folders this invocation writes are replaced; nothing else is touched.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import tempfile
import zlib
from pathlib import Path

PINNED_TORCH = "2.11.0"
PINNED_TRANSFORMERS = "5.17.0"
PINNED_TRANSFORMERS_LEGACY = "4.44.2"

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "golden"


def check_versions(legacy: bool) -> None:
    import torch
    import transformers

    want_tf = PINNED_TRANSFORMERS_LEGACY if legacy else PINNED_TRANSFORMERS
    torch_base = torch.__version__.split("+")[0]
    problems = []
    if transformers.__version__ != want_tf:
        problems.append(f"transformers {transformers.__version__} is installed, {want_tf} is pinned")
    if torch_base != PINNED_TORCH:
        problems.append(f"torch {torch.__version__} is installed, {PINNED_TORCH} is pinned")
    if problems:
        req = "requirements-4.44.txt" if legacy else "requirements-5.17.txt"
        sys.exit(
            "make_golden.py: wrong reference environment: "
            + "; ".join(problems)
            + f". Install xtask/golden/{req} into a virtual environment and run with its python."
        )


try:
    import torch
    import transformers  # noqa: F401
    from safetensors.torch import save_file
except ImportError as err:
    sys.exit(
        f"make_golden.py: {err} (python {sys.executable}). Run it with the python of a virtual environment"
        " holding xtask/golden/requirements-5.17.txt (requirements-4.44.txt for --legacy)."
    )

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

IS_V5 = False  # set in main()

# Tiny model shared by every case (spec notation: h=32, nh=2, d=16, L=3, p=4, M=8).
BASE_CONFIG = dict(
    hidden_size=32,
    num_attention_heads=2,
    num_hidden_layers=3,
    patch_size=4,
    image_size=32,
    mlp_ratio=4,
)
NUM_LAYERS = BASE_CONFIG["num_hidden_layers"]


def seed_of(*names: str) -> int:
    return zlib.crc32("/".join(names).encode("utf-8"))


def gen(*names: str) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed_of(*names))
    return g


# --------------------------------------------------------------------------------------------------
# Random weights: every parameter gets a non-trivial value so that any mistake shows.


def randomize_(model: torch.nn.Module, g: torch.Generator) -> None:
    layer_norms = {
        name for name, module in model.named_modules() if isinstance(module, torch.nn.LayerNorm)
    }
    with torch.no_grad():
        for name, param in model.named_parameters():
            owner, _, leaf = name.rpartition(".")
            shape = param.shape

            def normal(mean: float, std: float) -> torch.Tensor:
                return torch.randn(shape, generator=g, dtype=torch.float32) * std + mean

            if leaf == "lambda1":
                value = normal(0.5, 0.3)
            elif owner in layer_norms:
                value = normal(1.0, 0.3) if leaf == "weight" else normal(0.0, 0.3)
            elif leaf in ("cls_token", "mask_token", "register_tokens", "position_embeddings"):
                value = normal(0.0, 1.0)
            elif leaf == "weight" and param.dim() >= 2:
                fan_in = param[0].numel()
                std = min(0.3, max(0.1, fan_in**-0.5))
                value = normal(0.0, std)
            elif leaf == "bias":
                value = normal(0.0, 0.2)
            else:
                raise RuntimeError(f"randomize_: no rule for parameter {name} {tuple(shape)}")
            param.copy_(value.to(param.dtype))


# --------------------------------------------------------------------------------------------------
# Inputs and running transformers.


class Run:
    def __init__(
        self,
        name: str,
        hw: tuple[int, int],
        batch: int,
        head: str | None = None,
        hidden_states: bool = False,
        attentions: bool = False,
        mask: bool = False,
        labels: str | None = None,
        description: str = "",
    ):
        self.name = name
        self.hw = hw
        self.batch = batch
        self.head = head  # None: the case's head
        self.hidden_states = hidden_states
        self.attentions = attentions
        self.mask = mask
        self.labels = labels  # None | "single" | "multi" | "regression"
        self.description = description


def make_inputs(case: "Case", run: Run) -> dict[str, torch.Tensor]:
    g = gen(case.name, run.name, "inputs")
    h, w = run.hw
    p = BASE_CONFIG["patch_size"]
    inputs = {"pixel_values": torch.randn((run.batch, 3, h, w), generator=g, dtype=torch.float32)}
    if run.mask:
        num_patches = (h // p) * (w // p)
        mask = torch.rand((run.batch, num_patches), generator=g) < 0.4
        inputs["bool_masked_pos"] = mask.to(torch.uint8)
    if run.labels is not None:
        n = case.num_labels
        if run.labels == "single":
            inputs["labels"] = torch.randint(0, n, (run.batch,), generator=g, dtype=torch.int64)
        elif run.labels == "multi":
            inputs["labels"] = (torch.rand((run.batch, n), generator=g) < 0.5).to(torch.float32)
        elif run.labels == "regression":
            inputs["labels"] = torch.randn((run.batch,), generator=g, dtype=torch.float32)
        else:
            raise ValueError(run.labels)
    return inputs


def forward(model, head: str, run: Run, inputs: dict[str, torch.Tensor], dtype) -> dict[str, torch.Tensor]:
    """Runs `model` (already in `dtype`) and returns the named outputs (see README.md)."""
    kwargs = {"pixel_values": inputs["pixel_values"].to(dtype)}
    if "bool_masked_pos" in inputs:
        kwargs["bool_masked_pos"] = inputs["bool_masked_pos"].to(torch.bool)
    if "labels" in inputs:
        labels = inputs["labels"]
        kwargs["labels"] = labels if labels.dtype == torch.int64 else labels.to(dtype)
    if run.hidden_states:
        kwargs["output_hidden_states"] = True
    if run.attentions:
        kwargs["output_attentions"] = True

    with torch.no_grad():
        out = model(**kwargs)

    named: dict[str, torch.Tensor] = {}
    if head == "model":
        named["last_hidden_state"] = out.last_hidden_state
        named["pooler_output"] = out.pooler_output
    elif head == "classifier":
        named["logits"] = out.logits
        if "labels" in inputs:
            assert out.loss is not None and out.loss.dim() == 0, "expected a 0-d loss"
            named["loss"] = out.loss
    elif head == "backbone":
        for i, fm in enumerate(out.feature_maps):
            named[f"feature_maps.{i}"] = fm
    else:
        raise ValueError(head)
    if run.hidden_states:
        assert len(out.hidden_states) == NUM_LAYERS + 1, len(out.hidden_states)
        for i, t in enumerate(out.hidden_states):
            named[f"hidden_states.{i}"] = t
    else:
        assert getattr(out, "hidden_states", None) is None
    if run.attentions:
        assert len(out.attentions) == NUM_LAYERS, len(out.attentions)
        for i, t in enumerate(out.attentions):
            assert t is not None, "attentions not returned (eager attention required)"
            named[f"attentions.{i}"] = t
    for k, t in named.items():
        assert t.dtype == dtype, f"{k}: {t.dtype} != {dtype}"
        assert torch.isfinite(t).all(), f"{k} has non-finite values"
    return named


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a.to(torch.float64)
    b = b.to(torch.float64)
    den = torch.linalg.vector_norm(b).item()
    num = torch.linalg.vector_norm(a - b).item()
    return num / den if den > 0 else num


# --------------------------------------------------------------------------------------------------
# Cases.


class Case:
    def __init__(
        self,
        name: str,
        arch: str,
        runs: list[Run],
        config: dict | None = None,
        # f32 | f16 | bf16 | sharded | original | torch_original | timm | pytorch_bin
        storage: str = "f32",
        description: str = "",
        legacy: bool = False,
    ):
        self.name = name
        self.arch = arch
        self.runs = runs
        self.config = config or {}
        self.storage = storage
        self.description = description
        self.legacy = legacy

    @property
    def registers(self) -> bool:
        return self.arch.startswith("Dinov2WithRegisters")

    @property
    def head(self) -> str:
        if self.arch.endswith("ForImageClassification"):
            return "classifier"
        if self.arch.endswith("Backbone"):
            return "backbone"
        return "model"

    @property
    def num_labels(self) -> int:
        if "id2label" in self.config:
            return len(self.config["id2label"])
        return self.config.get("num_labels", 2)


R24x40 = (24, 40)

# Activations that transformers' ACT2FN does not know (5.17.0 raises KeyError for "selu"): the model is
# built with a placeholder, its MLP activation modules are replaced by the torch module, and the
# config.json written to the fixture names the real activation.
ACTIVATION_OVERRIDES = {"selu": ("relu", torch.nn.SELU)}


def model_cases() -> list[Case]:
    mlp_runs = [
        Run("sq32", (32, 32), 2, hidden_states=True, attentions=True,
            description="32x32 = pretraining grid 8x8 and H==W: position embeddings used as stored"),
        Run("rect24x40_mask", R24x40, 2, hidden_states=True, attentions=True, mask=True,
            description="24x40 (6x10 grid, downsampling) with a random bool_masked_pos"),
        Run("sq30", (30, 30), 1,
            description="30x30: remainder pixels dropped by the patch conv, 7x7 grid, interpolates"),
        Run("up44x36", (44, 36), 2, description="44x36: 11x9 grid, position embeddings upsampled"),
        Run("rect32x36", (32, 36), 1,
            description="32x36: 8x9 grid, not square so interpolation is not skipped"),
    ]
    cases = [
        Case("dinov2_mlp", "Dinov2Model", mlp_runs, {"hidden_act": "gelu"},
             description="Dinov2Model, MLP FFN with exact GELU"),
        Case("dinov2_swiglu", "Dinov2Model",
             [Run("rect24x40", R24x40, 2, hidden_states=True, description="SwiGLU FFN, 24x40")],
             {"use_swiglu_ffn": True}, description="Dinov2Model with use_swiglu_ffn (hidden 88)"),
    ]
    for act in ["gelu_new", "relu", "selu", "silu", "quick_gelu"]:
        description = f"Dinov2Model with hidden_act={act}"
        if act in ACTIVATION_OVERRIDES:
            description += (" (not in transformers' ACT2FN: built with relu, the MLP activation module replaced"
                            " by torch.nn.SELU(), config.json rewritten to say selu)")
        cases.append(Case(
            f"dinov2_act_{act}", "Dinov2Model",
            [Run("rect24x40", R24x40, 1, description=f"hidden_act={act}, 24x40")],
            {"hidden_act": act}, description=description))
    cases += [
        Case("dinov2_no_mask_token", "Dinov2Model",
             [Run("rect24x40_mask", R24x40, 2, mask=True,
                  description="bool_masked_pos given but use_mask_token=false: transformers ignores it")],
             {"use_mask_token": False}, description="Dinov2Model with use_mask_token=false (no mask_token tensor)"),
        Case("dinov2_no_qkv_bias", "Dinov2Model",
             [Run("rect24x40", R24x40, 2, description="qkv_bias=false, 24x40")],
             {"qkv_bias": False}, description="Dinov2Model with qkv_bias=false (no query/key/value biases)"),
        Case("dinov2_f16", "Dinov2Model",
             [Run("rect24x40", R24x40, 2,
                  description="float16 checkpoint; truth = the float16 weights upcast to float64")],
             storage="f16", description="Dinov2Model saved in float16"),
        Case("dinov2_bf16", "Dinov2Model",
             [Run("rect24x40", R24x40, 2,
                  description="bfloat16 checkpoint; truth = the bfloat16 weights upcast to float64")],
             storage="bf16", description="Dinov2Model saved in bfloat16"),
        Case("dinov2_sharded", "Dinov2Model",
             [Run("rect24x40", R24x40, 2, description="sharded checkpoint, 24x40")],
             storage="sharded", description="Dinov2Model saved as model.safetensors.index.json + shards"),
        Case("dinov2_original_names", "Dinov2Model",
             [Run("rect24x40", R24x40, 2, hidden_states=True,
                  description="facebookresearch tensor names (fused qkv, w12/w3), 24x40")],
             {"use_swiglu_ffn": True}, storage="original",
             description="SwiGLU Dinov2Model whose model.safetensors uses the original facebookresearch names"),
        Case("registers_mlp", "Dinov2WithRegistersModel", [
            Run("sq32", (32, 32), 2, hidden_states=True, attentions=True,
                description="32x32 = pretraining grid and H==W: position embeddings used as stored"),
            Run("rect24x40_mask", R24x40, 2, hidden_states=True, mask=True,
                description="24x40 (antialiased bicubic downsampling) with a random bool_masked_pos"),
            Run("up44x36", (44, 36), 2, description="44x36: 11x9 grid, antialiased bicubic upsampling"),
        ], {"num_register_tokens": 4}, description="Dinov2WithRegistersModel, 4 registers"),
        # Weights files without a config.json: heads 64 wide, as the reader assumes then.
        Case("original_pth", "Dinov2Model",
             [Run("rect24x40", R24x40, 2, hidden_states=True,
                  description="facebookresearch names in a torch.save file, config told from the tensors")],
             {"hidden_size": 64, "num_attention_heads": 1}, storage="torch_original",
             description="Dinov2Model (hidden 64, 1 head) as model.pth with the original names and no "
                         "config.json, and as teacher_checkpoint.pth, a training checkpoint holding it "
                         "under teacher.backbone. beside a student and heads"),
        Case("registers_timm", "Dinov2WithRegistersModel", [
            Run("sq32", (32, 32), 2, hidden_states=True, description="32x32: the stored position grid"),
            Run("rect24x40", R24x40, 2, description="24x40: antialiased bicubic resize"),
        ], {"hidden_size": 64, "num_attention_heads": 1, "num_register_tokens": 4, "use_swiglu_ffn": True},
            storage="timm",
            description="SwiGLU Dinov2WithRegistersModel (hidden 64, 1 head) as timm saves it: "
                        "model.safetensors with reg_token, no_embed_class position embedding, mlp.fc1/fc2, "
                        "no mask token, and no config.json"),
        Case("dinov2_pytorch_bin", "Dinov2ForImageClassification",
             [Run("logits", R24x40, 2, description="bfloat16 weights read from a torch.save pickle")],
             {"num_labels": 3}, storage="pytorch_bin",
             description="Dinov2ForImageClassification saved as config.json + pytorch_model.bin "
                         "(torch.save of its bfloat16 state dict, dinov2.-prefixed names)"),
    ]
    return cases


def head_cases() -> list[Case]:
    labels5 = ["cat", "dog", "bird", "fish", "horse"]
    return [
        Case("classifier_single", "Dinov2ForImageClassification", [
            Run("logits", R24x40, 2, description="logits only"),
            Run("loss", R24x40, 2, labels="single",
                description="int64 labels: problem_type inferred as single_label_classification (cross-entropy)"),
            Run("as_model", R24x40, 2, head="model",
                description="the dinov2.-prefixed checkpoint read as a bare Dinov2Model"),
        ], {"id2label": {str(i): n for i, n in enumerate(labels5)},
            "label2id": {n: i for i, n in enumerate(labels5)}},
            description="Dinov2ForImageClassification, 5 named labels, problem_type unset"),
        Case("classifier_multi", "Dinov2ForImageClassification", [
            Run("loss", R24x40, 2, labels="multi", description="float {0,1} labels, BCE-with-logits loss"),
        ], {"num_labels": 4, "problem_type": "multi_label_classification"},
            description="Dinov2ForImageClassification, multi_label_classification, 4 labels"),
        Case("classifier_regression", "Dinov2ForImageClassification", [
            Run("loss", R24x40, 2, labels="regression", description="float labels [B], MSE loss"),
        ], {"num_labels": 1}, description="Dinov2ForImageClassification, num_labels=1 (regression)"),
        Case("registers_classifier", "Dinov2WithRegistersForImageClassification", [
            Run("logits", R24x40, 2, hidden_states=True,
                description="logits; patch mean excludes the 4 registers"),
        ], {"num_labels": 3, "num_register_tokens": 4},
            description="Dinov2WithRegistersForImageClassification, 3 labels"),
        Case("backbone", "Dinov2Backbone", [
            Run("rect24x40", R24x40, 2, description="feature maps of stage1 and stage3, 24x40"),
            Run("up44x36_hidden", (44, 36), 2, hidden_states=True,
                description="44x36 (H>W), feature maps plus raw hidden states"),
        ], {"out_indices": [1, 3], "apply_layernorm": True, "reshape_hidden_states": True},
            description="Dinov2Backbone, out_indices [1,3], layer-normed and reshaped to [B,h,gh,gw]"),
        Case("backbone_flat", "Dinov2Backbone", [
            Run("rect24x40", R24x40, 2, description="flat [B,1+N,h] feature maps of stem and stage2"),
        ], {"out_features": ["stem", "stage2"], "apply_layernorm": False, "reshape_hidden_states": False},
            description="Dinov2Backbone, out_features [stem,stage2], no layernorm, no reshape"),
        Case("registers_backbone", "Dinov2WithRegistersBackbone", [
            Run("rect24x40", R24x40, 2, description="feature maps of stage2 and stage3 (index -1)"),
        ], {"out_indices": [2, -1], "num_register_tokens": 4},
            description="Dinov2WithRegistersBackbone, out_indices [2,-1] (negative index kept in config.json)"),
    ]


def legacy_cases() -> list[Case]:
    return [
        Case("legacy_444", "Dinov2Model", [
            Run("rect24x40", R24x40, 2, hidden_states=True,
                description="24x40 with the <=4.44 scale_factor=(g+0.1)/M position-embedding resize"),
            Run("sq30", (30, 30), 1, hidden_states=True,
                description="30x30 (7x7 grid) with the <=4.44 resize"),
            Run("up44x36", (44, 36), 2, hidden_states=True,
                description="44x36 (11x9 grid, upsampling) with the <=4.44 resize"),
        ], {"hidden_act": "gelu"}, legacy=True,
            description="Dinov2Model written by transformers 4.44.2 (legacy interpolation)"),
    ]


# --------------------------------------------------------------------------------------------------
# Writing a case.


def model_class(arch: str):
    import transformers

    return getattr(transformers, arch)


def config_class(arch: str):
    import transformers

    return transformers.Dinov2WithRegistersConfig if arch.startswith("Dinov2WithRegisters") else transformers.Dinov2Config


def from_pretrained(cls, path: Path, dtype):
    kw = {"dtype": dtype} if IS_V5 else {"torch_dtype": dtype}
    return cls.from_pretrained(str(path), attn_implementation="eager", **kw)


def to_original_names(state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """Inverse of spec §2.2: HF Dinov2Model names -> facebookresearch dinov2 names."""
    state = dict(state)
    out: dict[str, torch.Tensor] = {}

    def take(hf: str, orig: str) -> None:
        out[orig] = state.pop(hf)

    take("embeddings.cls_token", "cls_token")
    take("embeddings.mask_token", "mask_token")
    if "embeddings.register_tokens" in state:
        take("embeddings.register_tokens", "register_tokens")
    take("embeddings.position_embeddings", "pos_embed")
    for leaf in ("weight", "bias"):
        take(f"embeddings.patch_embeddings.projection.{leaf}", f"patch_embed.proj.{leaf}")
        take(f"layernorm.{leaf}", f"norm.{leaf}")
    for i in range(num_layers):
        hf, orig = f"encoder.layer.{i}", f"blocks.{i}"
        for leaf in ("weight", "bias"):
            take(f"{hf}.norm1.{leaf}", f"{orig}.norm1.{leaf}")
            take(f"{hf}.norm2.{leaf}", f"{orig}.norm2.{leaf}")
            out[f"{orig}.attn.qkv.{leaf}"] = torch.cat(
                [state.pop(f"{hf}.attention.attention.{x}.{leaf}") for x in ("query", "key", "value")], dim=0
            )
            take(f"{hf}.attention.output.dense.{leaf}", f"{orig}.attn.proj.{leaf}")
            if f"{hf}.mlp.fc1.{leaf}" in state:
                take(f"{hf}.mlp.fc1.{leaf}", f"{orig}.mlp.fc1.{leaf}")
                take(f"{hf}.mlp.fc2.{leaf}", f"{orig}.mlp.fc2.{leaf}")
            else:
                take(f"{hf}.mlp.weights_in.{leaf}", f"{orig}.mlp.w12.{leaf}")
                take(f"{hf}.mlp.weights_out.{leaf}", f"{orig}.mlp.w3.{leaf}")
        take(f"{hf}.layer_scale1.lambda1", f"{orig}.ls1.gamma")
        take(f"{hf}.layer_scale2.lambda1", f"{orig}.ls2.gamma")
    if state:
        raise RuntimeError(f"to_original_names: unmapped tensors {sorted(state)}")
    return out


def training_checkpoint(backbone: dict[str, torch.Tensor], g: torch.Generator) -> dict:
    """A DINOv2 training checkpoint's shape: teacher and student, each a backbone and a head, plus
    training state that is not tensors (the reader must take the teacher's backbone)."""
    import argparse

    def head() -> dict[str, torch.Tensor]:
        return {"dino_head.mlp.0.weight": torch.randn((8, 4), generator=g),
                "dino_head.last_layer.weight_g": torch.randn((16, 1), generator=g)}

    teacher = {f"backbone.{k}": v for k, v in backbone.items()} | head()
    # The student's backbone differs; two of its tensors are enough to make it a second candidate.
    student = {f"backbone.{k}": backbone[k] * 0.5 for k in ("cls_token", "pos_embed")} | head()
    return {"teacher": teacher, "student": student, "iteration": 7,
            "args": argparse.Namespace(lr=0.1, arch="vit_tiny"), "step": torch.tensor(7)}


def to_timm_names(state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """HF Dinov2WithRegistersModel names -> timm's (what timm's _convert_dinov2 makes of the original):
    `reg_token`, the CLS position folded into `cls_token` and left out of `pos_embed`
    (`no_embed_class`), SwiGLU as `mlp.fc1`/`mlp.fc2`, no mask token."""
    orig = to_original_names(state, num_layers)
    out = {}
    del orig["mask_token"]
    out["reg_token"] = orig.pop("register_tokens")
    out["cls_token"] = orig.pop("cls_token") + orig["pos_embed"][:, :1]
    out["pos_embed"] = orig.pop("pos_embed")[:, 1:].contiguous()
    for k, v in orig.items():
        out[k.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")] = v
    return {k: v.contiguous() for k, v in out.items()}


def save_case_model(case: Case, case_dir: Path):
    """Builds, randomises and saves the model; returns (f32 model, f64 model) loaded back from disk."""
    cfg_cls, cls = config_class(case.arch), model_class(case.arch)
    config_kw = dict(case.config)
    override = ACTIVATION_OVERRIDES.get(config_kw.get("hidden_act"))
    if override is not None:
        config_kw["hidden_act"] = override[0]
    config = cfg_cls(**{**BASE_CONFIG, **config_kw})
    torch.manual_seed(seed_of(case.name, "init"))  # transformers' own init, overwritten below
    model = cls(config)
    randomize_(model, gen(case.name, "weights"))
    model.eval()

    if case.storage == "f16":
        model = model.to(torch.float16)
    elif case.storage in ("bf16", "pytorch_bin"):
        model = model.to(torch.bfloat16)
    saved_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    with tempfile.TemporaryDirectory(prefix="dinov2-golden-") as tmp:
        if case.storage == "original":
            hf_dir = Path(tmp) / "hf"
            model.save_pretrained(hf_dir)
            case_dir.mkdir(parents=True)
            shutil.copy(hf_dir / "config.json", case_dir / "config.json")
            orig = to_original_names(model.state_dict(), config.num_hidden_layers)
            save_file({k: v.detach().contiguous() for k, v in orig.items()},
                      str(case_dir / "model.safetensors"), metadata={"format": "pt"})
            load_dir = hf_dir
        elif case.storage in ("torch_original", "timm", "pytorch_bin"):
            hf_dir = Path(tmp) / "hf"
            model.save_pretrained(hf_dir)
            case_dir.mkdir(parents=True)
            state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
            if case.storage == "pytorch_bin":
                # transformers' names, pickled by torch.save, beside the config.
                shutil.copy(hf_dir / "config.json", case_dir / "config.json")
                torch.save(state, case_dir / "pytorch_model.bin")
            elif case.storage == "torch_original":
                # No config.json: the reader tells the architecture from the tensors.
                orig = to_original_names(state, config.num_hidden_layers)
                torch.save(orig, case_dir / "model.pth")
                torch.save(training_checkpoint(orig, gen(case.name, "training")),
                           case_dir / "teacher_checkpoint.pth")
            else:
                save_file(to_timm_names(state, config.num_hidden_layers), str(case_dir / "model.safetensors"),
                          metadata={"format": "pt"})
            load_dir = hf_dir
        else:
            kw = {"max_shard_size": "60KB"} if case.storage == "sharded" else {}
            model.save_pretrained(case_dir, **kw)
            load_dir = case_dir
        if case.storage == "sharded":
            shards = sorted(case_dir.glob("model-*.safetensors"))
            assert (case_dir / "model.safetensors.index.json").exists() and len(shards) >= 2, shards

        model32 = from_pretrained(cls, load_dir, torch.float32).eval()
    if override is not None:
        for layer in model32.encoder.layer:
            layer.mlp.activation = override[1]()
        config_path = case_dir / "config.json"
        saved_config = json.loads(config_path.read_text())
        assert saved_config["hidden_act"] == override[0]
        saved_config["hidden_act"] = case.config["hidden_act"]
        config_path.write_text(json.dumps(saved_config, indent=2, sort_keys=True) + "\n")
    # The reloaded checkpoint must hold exactly the weights we randomised.
    state32 = model32.state_dict()
    assert set(state32) == set(saved_state), set(state32) ^ set(saved_state)
    for k, v in saved_state.items():
        assert torch.equal(state32[k], v.to(torch.float32)), f"reloaded {k} differs"
    assert model32.config._attn_implementation == "eager"
    model64 = copy.deepcopy(model32).to(torch.float64).eval()
    return model32, model64


def write_case(case: Case, out_dir: Path, transformers_version: str) -> list[dict]:
    case_dir = out_dir / case.name
    if case_dir.exists():
        shutil.rmtree(case_dir)
    model32, model64 = save_case_model(case, case_dir)

    runs_json = []
    for run in case.runs:
        head = run.head or case.head
        inputs = make_inputs(case, run)
        if head == "model" and case.head != "model":
            prefix = "dinov2_with_registers" if case.registers else "dinov2"
            m32, m64 = getattr(model32, prefix), getattr(model64, prefix)
        else:
            m32, m64 = model32, model64
        out64 = forward(m64, head, run, inputs, torch.float64)
        out32 = forward(m32, head, run, inputs, torch.float32)
        assert list(out64) == list(out32)
        errors = {k: rel_l2(out32[k], out64[k]) for k in out64}

        save_file({k: v.contiguous() for k, v in inputs.items()},
                  str(case_dir / f"{run.name}.inputs.safetensors"))
        save_file({k: v.detach().clone().contiguous() for k, v in out64.items()},
                  str(case_dir / f"{run.name}.expected.safetensors"))
        runs_json.append({
            "name": run.name,
            "head": head,
            "hidden_states": run.hidden_states,
            "attentions": run.attentions,
            "legacy_interpolation": case.legacy,
            "transformers_version": transformers_version,
            "description": f"{case.description}; {run.description}",
            "torch_f32_rel_l2": errors,
        })
    (case_dir / "runs.json").write_text(json.dumps(runs_json, indent=2) + "\n")
    return runs_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--legacy", action="store_true",
                        help="write only the legacy cases (run under transformers 4.44.2)")
    parser.add_argument("--only", default="",
                        help="comma-separated case names: write only these (the others stay as they are)")
    args = parser.parse_args()

    check_versions(args.legacy)
    import transformers

    global IS_V5
    IS_V5 = int(transformers.__version__.split(".")[0]) >= 5
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    cases = legacy_cases() if args.legacy else model_cases() + head_cases()
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {c.name for c in cases}
        if unknown:
            sys.exit(f"make_golden.py: --only names unknown cases {sorted(unknown)}")
        cases = [c for c in cases if c.name in wanted]
    args.out.mkdir(parents=True, exist_ok=True)
    worst = 0.0
    for case in cases:
        runs = write_case(case, args.out, transformers.__version__)
        for r in runs:
            errs = r["torch_f32_rel_l2"]
            worst = max(worst, *errs.values())
            summary = " ".join(f"{k}={v:.1e}" for k, v in errs.items() if not k.startswith(("hidden_states.", "attentions.")))
            extra = [v for k, v in errs.items() if k.startswith(("hidden_states.", "attentions."))]
            if extra:
                summary += f" (hidden/attn max {max(extra):.1e})"
            print(f"{case.name}/{r['name']}: f32 vs f64 rel L2 {summary}")
    print(f"wrote {len(cases)} case(s), {sum(len(c.runs) for c in cases)} run(s) to {args.out}; "
          f"worst f32-vs-f64 rel L2 {worst:.2e}")


if __name__ == "__main__":
    main()
