"""The language side: LLM engine, KV cache, LanguageStage and its worker."""
