"""ROS messages <-> the core's types. No model logic: only field mapping and validation."""

from __future__ import annotations

import array

import numpy as np
import torch
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CompressedImage, Image
from streamvlm_msgs.msg import Alert as AlertMsg
from streamvlm_msgs.msg import Answer as AnswerMsg
from streamvlm_msgs.msg import Caption as CaptionMsg
from streamvlm_msgs.msg import VisionTokens

from streamvlm.image import decode_compressed, decode_raw
from streamvlm.types import Alert, Answer, Caption, TokenBatch

TOKEN_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MAX_TOKEN_BYTES = 256 * 1024 * 1024  # far above any frame's tokens; refuses absurd messages early


def stamp_ns(time_msg) -> int:
    return int(time_msg.sec) * 1_000_000_000 + int(time_msg.nanosec)


def to_time(ns: int) -> Time:
    sec, nanosec = divmod(int(ns), 1_000_000_000)
    return Time(sec=sec, nanosec=nanosec)


def image_to_rgb(msg: Image | CompressedImage) -> np.ndarray:
    """RGB uint8 [H, W, 3]; raises ImageError with the reason for anything malformed."""
    if isinstance(msg, CompressedImage):
        return decode_compressed(msg.format, msg.data)
    return decode_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian))


def batch_to_msg(batch: TokenBatch, dtype: str = "float32") -> VisionTokens:
    tokens = batch.embeddings.detach().to("cpu", TOKEN_DTYPES[dtype]).contiguous()  # [N, D]
    msg = VisionTokens(frame_index=batch.frame_index, model=batch.model, num_tokens=tokens.shape[0],
                       dim=tokens.shape[1], dtype=dtype, grid_rows=batch.grid[0], grid_cols=batch.grid[1],
                       novelty=float(batch.novelty), reuse_ratio=float(batch.reuse_ratio), camera=batch.camera)
    msg.header.stamp = to_time(batch.stamp_ns)
    msg.header.frame_id = batch.frame_id
    # Bytes of the tensor as stored (little-endian on every platform we run on); bfloat16
    # has no numpy type, so go through uint8.
    msg.data = tokens.view(-1).view(torch.uint8).numpy().tobytes()
    msg.positions = array.array("I", batch.positions.to(torch.int64).tolist())
    return msg


def msg_to_batch(msg: VisionTokens) -> TokenBatch:
    """Raises ValueError when the message does not describe a [num_tokens, dim] token matrix."""
    if msg.dtype not in TOKEN_DTYPES:
        raise ValueError(f"unknown token dtype {msg.dtype!r}; expected one of {', '.join(TOKEN_DTYPES)}")
    dtype = TOKEN_DTYPES[msg.dtype]
    count, dim = int(msg.num_tokens), int(msg.dim)
    expected = count * dim * dtype.itemsize
    if count == 0 or dim == 0:
        raise ValueError(f"empty token matrix [{count}, {dim}]")
    if expected > MAX_TOKEN_BYTES or len(msg.data) != expected:
        raise ValueError(f"token data has {len(msg.data)} bytes; [{count}, {dim}] {msg.dtype} needs {expected}")
    cells = int(msg.grid_rows) * int(msg.grid_cols)
    positions = np.asarray(msg.positions, dtype=np.int64) if len(msg.positions) else np.arange(count)
    if len(positions) != count:
        raise ValueError(f"{len(positions)} positions for {count} tokens")
    if cells and (positions.max() >= cells or np.any(np.diff(positions) <= 0)):
        raise ValueError(f"positions must ascend inside the {msg.grid_rows}x{msg.grid_cols} grid")
    raw = torch.frombuffer(bytearray(memoryview(msg.data)), dtype=torch.uint8)
    embeddings = raw.view(dtype).reshape(count, dim)
    return TokenBatch(
        stamp_ns=stamp_ns(msg.header.stamp), frame_index=int(msg.frame_index), embeddings=embeddings,
        positions=torch.from_numpy(positions), grid=(int(msg.grid_rows), int(msg.grid_cols)),
        novelty=float(msg.novelty), reuse_ratio=float(msg.reuse_ratio), model=msg.model,
        frame_id=msg.header.frame_id, camera=msg.camera,
    )


def caption_to_msg(caption: Caption, frame_id: str) -> CaptionMsg:
    msg = CaptionMsg(text=caption.text, latency_ms=float(caption.latency_ms), start=to_time(caption.start_ns))
    msg.header.stamp = to_time(caption.stamp_ns)
    msg.header.frame_id = frame_id
    return msg


def answer_to_msg(answer: Answer, frame_id: str) -> AnswerMsg:
    msg = AnswerMsg(question=answer.question, answer=answer.text, success=answer.success, error=answer.error,
                    latency_ms=float(answer.latency_ms), evidence=[to_time(t) for t in answer.evidence_ns],
                    evidence_cameras=list(answer.evidence_cameras))
    msg.header.stamp = to_time(answer.stamp_ns)
    msg.header.frame_id = frame_id
    return msg


def alert_to_msg(alert: Alert, frame_id: str) -> AlertMsg:
    msg = AlertMsg(rule=alert.rule, camera=alert.camera, text=alert.text, probability=float(alert.probability),
                   evidence=[to_time(t) for t in alert.evidence_ns], evidence_cameras=list(alert.evidence_cameras))
    msg.header.stamp = to_time(alert.stamp_ns)
    msg.header.frame_id = frame_id
    return msg


def fill_ask_response(response, answer: Answer):
    """Copies an Answer into a streamvlm_msgs/srv/Ask response and returns it."""
    response.answer = answer.text
    response.success = answer.success
    response.error = answer.error
    response.latency_ms = float(answer.latency_ms)
    response.stamp = to_time(answer.stamp_ns)
    response.evidence = [to_time(t) for t in answer.evidence_ns]
    response.evidence_cameras = list(answer.evidence_cameras)
    return response
