"""The text around the frames and questions, derived once from the model's chat template.

A stream is one long chat: the user turn holds the frames seen so far, the question
closes the turn, the assistant answers, and the next frames open a new user turn.
Rendering the template with placeholders and cutting it at them gives the pieces, so the
streamed token sequence is exactly the one the model's own processor would build.
"""

from __future__ import annotations

from dataclasses import dataclass

_QUESTION = "\x00QUESTION\x00"
_ANSWER = "\x00ANSWER\x00"


@dataclass(frozen=True)
class PromptFormat:
    stream_prefix: str  # before the first frame: system prompt, "<|im_start|>user "...
    question_prefix: str  # after the frames, before the question text
    question_suffix: str  # after the question: end of turn, assistant header
    turn_separator: str  # after an answer, before the next frames
    stop_token_ids: frozenset[int]
    # Text put before each frame: a time marker, the frame's time since the stream's first
    # frame as `{s}` (whole seconds) or `{mm}:{ss}` (SmolVLM2's "Frame from 01:05:"), and
    # the family's image delimiter (Qwen2-VL's <|vision_start|>); "" for models with neither
    # (LLaVA-OneVision's own checkpoints).
    frame_marker: str = ""
    # Text after each frame's tokens (SmolVLM's <fake_token_around_image>, Qwen2-VL's <|vision_end|>).
    frame_suffix: str = ""

    @classmethod
    def from_chat_template(cls, tokenizer, video_token: str, stop_tokens: tuple[str, ...],
                           frame_marker: str = "", frame_suffix: str = "",
                           template: str | None = None) -> "PromptFormat":
        """`template`: a chat template to use instead of the tokenizer's own."""
        def render(messages, generation_prompt: bool) -> str:
            return tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation_prompt, chat_template=template
            )

        def user(text: str) -> dict:
            return {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}

        def assistant(text: str) -> dict:
            return {"role": "assistant", "content": [{"type": "text", "text": text}]}

        one_turn = render([user(_QUESTION)], True)
        prefix, video, rest = one_turn.partition(video_token)
        if not video or rest.count(_QUESTION) != 1:
            raise ValueError(f"chat template does not place {video_token!r} before the question")
        question_prefix, _, question_suffix = rest.partition(_QUESTION)

        two_turns = render([user(_QUESTION), assistant(_ANSWER), user(_QUESTION)], True)
        after_answer = two_turns.partition(_ANSWER)[2]
        separator = after_answer.partition(video_token)[0]

        stop_ids = {tokenizer.convert_tokens_to_ids(t) for t in stop_tokens}
        if tokenizer.eos_token_id is not None:
            stop_ids.add(tokenizer.eos_token_id)
        stop_ids.discard(tokenizer.unk_token_id)
        return cls(prefix, question_prefix, question_suffix, separator, frozenset(stop_ids), frame_marker,
                   frame_suffix)

    def marker(self, seconds: int, camera: str = "") -> str:
        """The text before a frame taken `seconds` after the stream's first one. Minutes are
        not capped at 60, as SmolVLM's processor writes them. A named camera (a stream of
        several) leads the marker, with the time in seconds where the model's own marker
        has none: " front 12s"."""
        minutes, rest = divmod(seconds, 60)
        text = (self.frame_marker.replace("{s}", str(seconds)).replace("{mm}", f"{minutes:02d}")
                .replace("{ss}", f"{rest:02d}"))
        if not camera:
            return text
        timed = any(field in self.frame_marker for field in ("{s}", "{mm}", "{ss}"))
        return f" {camera}" + (text if timed else f" {seconds}s{text}")
