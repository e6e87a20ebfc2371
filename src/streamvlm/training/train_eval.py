"""`streamvlm train eval`: train the evaluation model's ViT, projector and LoRA, deterministically.

Stage 1 (vision): the ViT and projector learn, from synthetic frames alone, to put into
each 4x4 token cell holding an object's centre the sum of SmolLM2's embeddings of its
colour and shape words, and the embedding of " nothing" elsewhere; the LM reads such
tokens almost as text from the start. Stage 2 (language): LoRA on every attention
projection, the projector and the frame-end embedding learn to answer the synthetic
questions from streaming contexts (`samples`); the ViT stays frozen, so its features
are computed once per frame.

Same seed, same thread count, same library versions: same weights, byte for byte (the
report prints their sha256). Different thread counts can change float sums, hence bits.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from streamvlm.machine import machine
from streamvlm.models.eval_model import (FRAME_MARKER, LORA_TARGETS, VISION, build, load_trained,
                                         trainable_state)
from streamvlm.models.llava_onevision import PixelSpec
from streamvlm.models.prompt import PromptFormat
from streamvlm.synth import COLOURS, SHAPES, evaluation_scene
from streamvlm.training.checkpoint import Checkpoints, module_states, restore_modules
from streamvlm.training.lora import add_lora, load_lora, lora_state
from streamvlm.training.samples import CELLS, HORIZON, ContextMaker, FrameRef, pack

VISION_SEEDS = 10_000  # scenes for stage 1 start at this seed, stage 2 at TRAIN_SEEDS, held-out at HELD_OUT
TRAIN_SEEDS = 20_000
HELD_OUT = 30_000


@dataclass(frozen=True)
class TrainSettings:
    seed: int = 0
    threads: int = 2
    # Stage 1 is limited by how long it trains, not by the ViT's size or resolution (at 1000
    # steps, 4 or 6 layers and 128 or 192 px all read 0.58-0.63 of held-out objects right).
    vision_scenes: int = 800
    vision_frames: int = 30000  # v3 read held-out whole frames 0.60 right, training ones 0.73: more data
    vision_epochs: int = 16
    vision_lr: float = 1e-3
    scenes: int = 24
    scene_frames: int = 1200
    steps: int = 1600
    questions: int = 16  # per context, asked after `ends` different frames of it
    ends: int = 4
    reference_frames: int = 64  # longest full-attention context at the start of stage 2 ...
    reference_frames_last: int = 128  # ... and at its end (a curriculum from short to long)
    lr: float = 1e-3
    projector_lr: float = 2e-4
    rank: int = 16
    alpha: float = 32.0
    held_out: int = 120
    # bfloat16 autocast for the forward passes (master weights stay float32): stage 2 ran
    # 1.3-1.45x faster on the 2-core CPU here (AVX512-BF16), same loss to 0.3%; "off": float32.
    autocast: str = "bfloat16"
    # Trained parts (.safetensors) to start from instead of stage 1: stage 2 then begins from
    # their ViT, projector, frame-end embedding and LoRA. For a stage-2 recipe change tried on
    # top of the last model when a whole training (hours on 2 cores) does not fit; "" : none.
    init: str = ""
    # cpu, or cuda on a lent GPU (minutes instead of an hour; CUDA kernels may sum in another
    # order from run to run, so there the same seed gives close, not identical, weights).
    device: str = "cpu"


class Trainer:
    def __init__(self, settings: TrainSettings, say=print):
        self.s, self.say = settings, say
        torch.manual_seed(settings.seed)
        torch.set_num_threads(settings.threads)
        self.device = torch.device(settings.device)
        self.model, self.tokenizer = build(None, settings.seed)
        self.model.to(self.device)
        self.inner = self.model.model
        self.prompt = PromptFormat.from_chat_template(self.tokenizer, "<video>", ("<|im_end|>",), FRAME_MARKER)
        side = VISION["image_size"]
        self.pixels = PixelSpec(side, side, [0.5] * 3, [0.5] * 3, 1 / 255)
        self.embedding = self.inner.language_model.embed_tokens.weight
        self.stop_id = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self._ids: dict[str, torch.Tensor] = {}
        self._words = None  # `word_table`, made once
        # What the model was trained on, as one hash: stage 1's frames and labels, then each
        # stage-2 context's frames and answer tokens, chained (resumable: it is a string).
        self.data_sha256 = ""
        for p in self.model.parameters():
            p.requires_grad_(False)

    # --- shared pieces ----------------------------------------------------------------

    def tokenize(self, text: str) -> torch.Tensor:
        # Cached per trainer (a method-level lru_cache would keep every trainer, and its
        # model, alive for the life of the process).
        if text not in self._ids:
            self._ids[text] = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        return self._ids[text]

    def record(self, *parts: torch.Tensor | str) -> None:
        """Chain training data into `data_sha256`."""
        digest = hashlib.sha256(self.data_sha256.encode())
        for part in parts:
            digest.update(part.encode() if isinstance(part, str) else part.contiguous().numpy().tobytes())
        self.data_sha256 = digest.hexdigest()

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding[ids.to(self.device)]

    def word(self, text: str) -> torch.Tensor:
        ids = self.tokenize(" " + text)
        if len(ids) != 1:
            raise ValueError(f"{text!r} is {len(ids)} tokens; the evaluation vocabulary needs single tokens")
        return self.embedding[int(ids[0])]

    def word_table(self) -> tuple[torch.Tensor, dict[tuple[str, str], int]]:
        """Stage 1's targets: row 0 " nothing", then colour + shape word sums; and the row of each
        (colour, shape)."""
        if self._words is None:
            combos = [(c, sh) for c in COLOURS for sh in SHAPES]
            self._words = (torch.stack([self.word("nothing")] + [self.word(c) + self.word(sh) for c, sh in combos]),
                           {combo: i + 1 for i, combo in enumerate(combos)})
        return self._words

    def cell_labels(self, scene, index: int) -> torch.Tensor:
        """[16] each token cell's row of `word_table`: the object centred there, or 0 (nothing)."""
        label_of = self.word_table()[1]
        labels = torch.zeros(CELLS, dtype=torch.long)
        for obj in scene.visible(index):
            labels[scene.cell_of(obj, index, (4, 4))] = label_of[(obj.colour, obj.shape)]
        return labels

    def autocast(self):
        """The training forward passes' precision (the held-out reports run in float32)."""
        if self.s.autocast not in ("bfloat16", "off"):
            raise ValueError(f"autocast is bfloat16 or off, not {self.s.autocast!r}")
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.s.autocast == "bfloat16")

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalized pixels [B, 3, S, S] -> the ViT's last hidden state [B, P, C] (LLaVA-OV's choice)."""
        return self.inner.vision_tower(pixels, output_hidden_states=True).hidden_states[-1]

    def project(self, features: torch.Tensor) -> torch.Tensor:
        return self.inner.apply_pooling(self.inner.multi_modal_projector(features))  # [B, 16, D]

    def render(self, scene, index: int) -> torch.Tensor:
        return self.pixels.apply(scene.frame(index))[0]

    # --- stage 1 ------------------------------------------------------------------------

    def train_vision(self, checkpoints: Checkpoints, state: dict | None = None) -> dict:
        s = self.s
        modules = (self.inner.vision_tower, self.inner.multi_modal_projector)
        if state is not None and state["stage"] == "language":  # stage 1 finished in an earlier session
            restore_modules(state["vision"], *modules)
            self.data_sha256 = state["data_sha256"]
            return state["vision_report"]
        rng = np.random.default_rng(s.seed)
        table = self.word_table()[0]
        picks = [(int(rng.integers(s.vision_scenes)), int(rng.integers(300))) for _ in range(s.vision_frames)]
        self.say(f"stage 1: rendering {len(picks)} frames")
        # Resized frames kept as uint8, one scene alive at a time: 30000 float frames and 800
        # scenes' float64 backgrounds together outgrew 24 GiB.
        side = VISION["image_size"]
        pixels = torch.empty((len(picks), 3, side, side), dtype=torch.uint8)
        labels = torch.empty((len(picks), CELLS), dtype=torch.long)
        rows_of: dict[int, list[int]] = {}
        for row, (k, _) in enumerate(picks):
            rows_of.setdefault(k, []).append(row)
        for k, rows in sorted(rows_of.items()):
            scene = evaluation_scene(VISION_SEEDS + k, 300)
            for row in rows:
                pixels[row] = torch.from_numpy(self.pixels.resize(scene.frame(picks[row][1])))
                labels[row] = self.cell_labels(scene, picks[row][1])
        self.data_sha256 = ""
        self.record(pixels, labels)
        key = self._vision_key()
        saved = checkpoints.load_vision(key) if state is None else None
        if saved is not None:  # the same stage 1 finished in an earlier training: same bytes
            restore_modules(saved["vision"], *modules)
            torch.set_rng_state(saved["rng"])
            checkpoints.seconds_before = saved["seconds"]
            self.say(f"stage 1: reused from an earlier training with the same stage 1 ({saved['seconds']:.0f} s)")
            return saved["vision_report"]
        params = list(self.inner.vision_tower.parameters()) + list(self.inner.multi_modal_projector.parameters())
        for p in params:
            p.requires_grad_(True)
        batch = 32
        steps = s.vision_epochs * math.ceil(len(picks) / batch)
        optimizer = torch.optim.AdamW(params, lr=s.vision_lr, weight_decay=0.01)
        schedule = _cosine(optimizer, steps, warmup=50)
        generator = torch.Generator().manual_seed(s.seed)
        start, step, first_epoch, loss = time.perf_counter(), 0, 0, None
        if state is not None:  # stage 1 in progress: go on after its last finished epoch
            restore_modules(state["vision"], *modules)
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            generator.set_state(state["generator"])
            first_epoch, loss = state["step"], torch.tensor(state["loss"])
            step = first_epoch * math.ceil(len(picks) / batch)
        for epoch in range(first_epoch, s.vision_epochs):
            order = torch.randperm(len(picks), generator=generator)
            for first in range(0, len(picks), batch):
                rows = order[first:first + batch]
                with self.autocast():
                    inputs = self.pixels.normalize(pixels[rows]).to(self.device)
                    tokens = self.project(self.features(inputs)).float()  # [B, 16, D]
                target = labels[rows].to(self.device)
                # Regression onto the words' embeddings, plus a classification over the
                # same table so that near-identical shape words are pulled apart.
                nearness = -torch.cdist(tokens.reshape(-1, tokens.shape[-1]), table).square()
                loss = F.mse_loss(tokens, table[target]) / table.var() + F.cross_entropy(nearness, target.reshape(-1))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                step += 1
            self.say(f"stage 1: epoch {epoch + 1}/{s.vision_epochs} loss {loss.item():.4f} "
                     f"({time.perf_counter() - start:.0f} s)")
            checkpoints.save("vision", epoch + 1, {
                "vision": module_states(*modules), "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(), "generator": generator.get_state(), "loss": loss.item()})
        for p in params:
            p.requires_grad_(False)
        held = [evaluation_scene(HELD_OUT + k, 300) for k in range(4)]
        correct = objects = frames_right = frames = 0
        with torch.no_grad():
            for scene in held:
                for i in range(0, 300, 10):
                    tokens = self.project(self.features(self.render(scene, i)[None].to(self.device)))[0]
                    nearest = torch.cdist(tokens, table).argmin(dim=1).cpu()
                    truth = self.cell_labels(scene, i)
                    objects += int((truth > 0).sum())
                    correct += int(((nearest == truth) & (truth > 0)).sum())
                    # A frame is read right when every cell is: no object missed, misread,
                    # put in a neighbouring cell or seen twice. "What is visible now?" needs it.
                    frames += 1
                    frames_right += int(torch.equal(nearest, truth))
        accuracy, whole = correct / max(objects, 1), frames_right / max(frames, 1)
        self.say(f"stage 1: held-out object cells read right {accuracy:.3f} ({objects} objects), "
                 f"whole frames {whole:.3f} ({frames})")
        report = {"loss": round(loss.item(), 5), "cell_accuracy": round(accuracy, 4), "frame_accuracy": round(whole, 4),
                  "steps": step}
        checkpoints.save_vision(key, {"vision": module_states(*modules), "vision_report": report,
                                      "rng": torch.get_rng_state(), "seconds": checkpoints.seconds})
        return report

    def _vision_key(self) -> dict:
        """What stage 1's result depends on, beyond its code: its settings, the thread count
        and torch (summation order), and the frames and labels it is trained on."""
        stage1 = ("seed", "threads", "vision_scenes", "vision_frames", "vision_epochs", "vision_lr", "autocast",
                  "device")
        return {**{name: getattr(self.s, name) for name in stage1}, "torch": torch.__version__,
                "torch_threads": torch.get_num_threads(), "data_sha256": self.data_sha256}

    def start_from(self, path: Path) -> dict:
        """Stage 1 replaced by earlier trained parts; their LoRA waits for stage 2's adapters.
        Returns the vision report of their manifest, marked as inherited."""
        from safetensors.torch import load_file

        parts = {k: v.float() for k, v in load_file(str(path)).items()}
        load_trained(self.model, {k: v for k, v in parts.items() if not k.startswith("lora.")})
        self.model.to(self.device)
        self._init_lora = {k: v for k, v in parts.items() if k.startswith("lora.")}
        self.record(hashlib.sha256(path.read_bytes()).hexdigest())
        earlier = manifest(path)
        report = json.loads(earlier.read_text())["vision"] if earlier.exists() else {}
        self.say(f"stage 1: taken from {path}")
        return {**report, "from": path.name}

    # --- stage 2 ------------------------------------------------------------------------

    def train_language(self, checkpoints: Checkpoints, vision_report: dict, state: dict | None = None) -> dict:
        s = self.s
        layers = self.inner.language_model.layers
        adapters = add_lora(layers, LORA_TARGETS, s.rank, s.alpha, s.seed)
        if getattr(self, "_init_lora", None):  # --init: go on from its adapters
            load_lora(layers, LORA_TARGETS, self._init_lora)
        lora = [p for a in adapters for p in (a.A, a.B)]
        projector = list(self.inner.multi_modal_projector.parameters())
        for p in lora + projector + [self.inner.image_newline]:
            p.requires_grad_(True)
        optimizer = torch.optim.AdamW([
            {"params": lora + [self.inner.image_newline], "lr": s.lr},
            {"params": projector, "lr": s.projector_lr},
        ], weight_decay=0.0)
        schedule = _cosine(optimizer, s.steps, warmup=50)
        scenes = {TRAIN_SEEDS + k: evaluation_scene(TRAIN_SEEDS + k, s.scene_frames) for k in range(s.scenes)}
        maker = ContextMaker(scenes, s.seed, (s.reference_frames, s.reference_frames_last))
        self._scenes, self._features = dict(scenes), {}
        start, losses, first_step = time.perf_counter(), [], 0
        tally: dict[str, list[int]] = {}  # teacher-forced exact answers per kind, for the log
        if state is not None and state["stage"] == "language":  # go on after the last saved step
            self._restore_language(state, adapters)
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            maker.rng.bit_generator.state = state["maker"]
            losses, first_step = list(state["losses"]), state["step"]
            self.data_sha256 = state["data_sha256"]
        for step in range(first_step, s.steps):
            context = maker.make(s.questions, step / s.steps, s.ends)
            packed = self._pack(context)
            self.record(packed.targets, repr([(r.scene, r.index, None if r.keep is None else list(r.keep))
                                              for r in context.pieces if isinstance(r, FrameRef)]))
            with self.autocast():
                logits, targets = self._logits(packed)
            logits = logits.float()
            loss = F.cross_entropy(logits, targets)
            for kind, right in self._exact(context, logits, targets):
                tally.setdefault(kind, []).append(right)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            # A context for which no question could be drawn has no answer tokens: its loss
            # is NaN (a mean over nothing), its gradients zero. It is left out of the log.
            losses.append(loss.item())
            if (step + 1) % 50 == 0:
                elapsed = time.perf_counter() - start
                done = step + 1 - first_step
                right = " ".join(f"{kind} {np.mean(v[-200:]):.2f}" for kind, v in sorted(tally.items()))
                self.say(f"stage 2: step {step + 1}/{s.steps} loss {np.nanmean(losses[-50:]):.4f} "
                         f"({elapsed:.0f} s, about {elapsed / done * (s.steps - step - 1):.0f} s left); "
                         f"exact answers over the last 200 of each kind: {right}")
            if (step + 1) % checkpoints.every_steps == 0 or step + 1 == s.steps:
                checkpoints.save("language", step + 1, {
                    "vision": module_states(self.inner.vision_tower, self.inner.multi_modal_projector),
                    "vision_report": vision_report, "lora": [(a.A.detach().clone(), a.B.detach().clone())
                                                             for a in adapters],
                    "newline": self.inner.image_newline.detach().clone(), "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(), "maker": maker.rng.bit_generator.state, "losses": losses,
                    "data_sha256": self.data_sha256})
        for p in self.model.parameters():
            p.requires_grad_(False)
        return {"loss_last_100": round(float(np.nanmean(losses[-100:])), 5) if losses else None, "steps": s.steps,
                "held_out": self.held_out()}

    @torch.no_grad()
    def _restore_language(self, state: dict, adapters) -> None:
        restore_modules(state["vision"], self.inner.vision_tower, self.inner.multi_modal_projector)
        for adapter, (a, b) in zip(adapters, state["lora"], strict=True):
            adapter.A.copy_(a)
            adapter.B.copy_(b)
        self.inner.image_newline.copy_(state["newline"])

    def _frame_features(self, ref: FrameRef) -> torch.Tensor:
        key = (ref.scene, ref.index)
        if key not in self._features:
            with torch.no_grad():
                pixels = self.render(self._scenes[ref.scene], ref.index)[None].to(self.device)
                self._features[key] = self.features(pixels)[0]
        return self._features[key]

    def _pack(self, context):
        refs = [p for p in context.pieces if isinstance(p, FrameRef)]
        tokens = self.project(torch.stack([self._frame_features(r) for r in refs]))
        by_id = {id(r): t if r.keep is None else t[torch.as_tensor(r.keep)] for r, t in zip(refs, tokens)}
        return pack(context, lambda r: by_id[id(r)], self.embed, self.tokenize, self.prompt,
                    self.inner.image_newline, self.stop_id)

    def _logits(self, packed) -> tuple[torch.Tensor, torch.Tensor]:
        allowed, targets = packed.mask.to(self.device), packed.targets.to(self.device)
        mask = torch.zeros(allowed.shape, device=self.device).masked_fill(~allowed, float("-inf"))[None, None]
        hidden = self.inner.language_model(inputs_embeds=packed.embeds[None],
                                           position_ids=packed.positions.to(self.device)[None],
                                           attention_mask=mask).last_hidden_state[0]
        where = targets != -100
        return self.model.lm_head(hidden[where]), targets[where]

    def _exact(self, context, logits: torch.Tensor, targets: torch.Tensor) -> list[tuple[str, int]]:
        """(kind, 1 if every answer token is the argmax) per question, teacher-forced."""
        hits = (logits.argmax(-1) == targets).tolist()
        found, offset = [], 0
        for question in context.questions:
            n = len(self.tokenize(question.answer)) + 1
            found.append((question.kind, int(all(hits[offset:offset + n]))))
            offset += n
        return found

    @torch.no_grad()
    def held_out(self) -> dict:
        """Answers read off teacher-forced argmax on held-out scenes, exact match per kind."""
        s = self.s
        scenes = {HELD_OUT + k: evaluation_scene(HELD_OUT + k, s.scene_frames) for k in range(4)}
        self._scenes.update(scenes)
        maker = ContextMaker(scenes, s.seed + 1, (s.reference_frames_last, s.reference_frames_last))
        right: dict[str, list[int]] = {}
        clear: dict[str, list[int]] = {}  # the same, for questions whose frames the ViT read right
        read: dict[tuple[int, int], bool] = {}  # each frame judged once: questions share frames
        for _ in range(s.held_out):
            context = maker.make(s.questions, 1.0, s.ends)
            packed = self._pack(context)
            for question, (kind, hit) in zip(context.questions, self._exact(context, *self._logits(packed))):
                right.setdefault(kind, []).append(hit)
                frames = _frames_needed(question)
                for i in frames or ():
                    if (context.scene, i) not in read:
                        read[context.scene, i] = self._read_right(context.scene, i)
                if frames and all(read[context.scene, i] for i in frames):
                    clear.setdefault(kind, []).append(hit)
        report = {kind: round(float(np.mean(v)), 3) for kind, v in sorted(right.items())}
        # Vision or language? Accuracy over questions whose frames were all read right
        # (nearest words = ground truth in every cell), with how many questions that leaves.
        report["frames_read_right"] = {kind: [round(float(np.mean(v)), 3), len(v)] for kind, v in sorted(clear.items())}
        self.say(f"stage 2: held-out exact answers {report}")
        return report

    @torch.no_grad()
    def _read_right(self, scene_id: int, index: int) -> bool:
        """Whether the frame's tokens, as the LM gets them, are nearest to the right words in every cell."""
        tokens = self.project(self._frame_features(FrameRef(scene_id, index))[None])[0]
        nearest = torch.cdist(tokens, self.word_table()[0]).argmin(dim=1).cpu()
        return torch.equal(nearest, self.cell_labels(self._scenes[scene_id], index))

    def trained_parts(self) -> dict[str, torch.Tensor]:
        parts = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in trainable_state(self.model).items()}
        lora = lora_state(self.inner.language_model.layers, LORA_TARGETS)
        parts.update({k: v.to("cpu", torch.float16 if k != "lora.scale" else torch.float32).contiguous()
                      for k, v in lora.items()})
        return parts


def train(settings: TrainSettings, out: Path, say=print, checkpoints: Checkpoints | None = None,
          resume: bool = False) -> dict:
    """Train and write the trained parts to `out`. With `checkpoints`, the state is saved as
    training goes, and `resume` goes on from the last saved state (raises `Interrupted` when
    the checkpoints' time is up)."""
    from safetensors.torch import save_file

    checkpoints = checkpoints or Checkpoints(None, settings)
    trainer = Trainer(settings, say)
    state = checkpoints.load() if resume else None
    if state is not None:
        torch.set_rng_state(state["rng"])
        say(f"resuming at {state['stage']} step {state['step']} ({state['seconds']:.0f} s trained before)")
    if settings.init and state is None:
        vision = trainer.start_from(Path(settings.init))
    else:  # a resumed training with --init is past stage 1: its state holds the ViT
        vision = trainer.train_vision(checkpoints, state)
    language = trainer.train_language(checkpoints, vision, state)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(trainer.trained_parts(), str(out))
    report = {"weights": out.name, "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
              "bytes": out.stat().st_size, "data_sha256": trainer.data_sha256,
              "seconds": round(checkpoints.seconds, 1), "finished": datetime.datetime.now().isoformat(timespec="seconds"),
              "vision": vision, "language": language, "settings": asdict(settings), "machine": machine()}
    if settings.init:  # what it started from, so the chain of trainings stays on record
        start = Path(settings.init)
        report["init"] = {"weights": start.name, "sha256": hashlib.sha256(start.read_bytes()).hexdigest(),
                          "manifest": json.loads(manifest(start).read_text()) if manifest(start).exists() else None}
    # The manifest beside the weights: how to make the same bytes again, and what they score.
    manifest(out).write_text(json.dumps(report, indent=1) + "\n")
    return report


def _frames_needed(question) -> range | None:
    """The frames a short-range question's answer depends on (None: a needle's, or unknown)."""
    if question.kind in ("now", "alert"):
        return range(question.frame, question.frame + 1)
    if question.kind == "attribute_at":
        return range(question.about - 1, question.about + 1)
    if question.kind == "count_since":
        return range(question.about, question.frame + 1)
    if question.kind == "left_when":
        return range(max(0, question.frame - HORIZON + 1), question.frame + 1)
    return None


def manifest(weights: Path) -> Path:
    return weights.with_suffix(".json")


def _cosine(optimizer, steps: int, warmup: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
