"""live: encoder_node and llm_node in one process, tokens handed over in memory.

Same node names, parameters and topics as the two-process set-up, and one copy of the
model's weights; `vision_tokens` is still published, but only while something subscribes.
"""

from __future__ import annotations

from streamvlm.ros.encoder_node import EncoderNode
from streamvlm.ros.llm_node import LlmNode


def compose(**node_kwargs) -> list:
    """The two nodes, wired together; the LLM node comes first so tokens have somewhere to go."""
    llm = LlmNode(subscribe_tokens=False, **node_kwargs)
    encoder = EncoderNode(on_batch=llm.take_batch, **node_kwargs)
    return [llm, encoder]


def main(args: list[str] | None = None) -> int:
    from streamvlm.ros.spin import run

    return run(compose, args)


if __name__ == "__main__":
    import sys

    sys.exit(main())
