"""Where Hermes reads each model provider's key, so `config.model.api_key` is written there.

Read from hermes-agent 0.19.0 (the registry-free image) and checked by running it against a
scripted provider. Hermes does not read one place for every provider:

- `custom` (any OpenAI-compatible endpoint) sends `model.api_key` from config.yaml, and only
  when `model.base_url` is set too (hermes_cli/runtime_provider.py:1148). `OPENAI_API_KEY`
  goes only to openai.com and Azure hosts (:1150); without `model.api_key` a custom endpoint
  gets `<VENDOR>_API_KEY` derived from its host name (:164-218, `DOCKER_API_KEY` for
  `host.docker.internal`) or `Bearer no-key-required` (:1181).
- `openrouter` reads `OPENROUTER_API_KEY` and never `model.api_key` (:1125-1130).
- Every other API-key provider reads the first set variable of its `api_key_env_vars`
  (hermes_cli/auth.py:587-593, the table at :176-440); `model.api_key` is not read for them.

So a named provider's key is written into `.env` under the variable below (a managed secret
key, like any other), never into config.yaml where Hermes would ignore it.
"""
from __future__ import annotations

from typing import NamedTuple

CUSTOM = "custom"


class ProviderKeyPlace(NamedTuple):
    env: str | None
    """The `.env` variable Hermes reads the key from; None: config.yaml `model.api_key`."""
    source: str
    """Where hermes-agent 0.19.0 reads it (file:line), for the README and error messages."""
    base_url: bool = True
    """Whether Hermes honours `model.base_url` for this provider."""


PROVIDER_KEYS: dict[str, ProviderKeyPlace] = {
    CUSTOM: ProviderKeyPlace(None, "hermes_cli/runtime_provider.py:1148"),
    "openrouter": ProviderKeyPlace("OPENROUTER_API_KEY", "hermes_cli/runtime_provider.py:1128", base_url=False),
    "openai-api": ProviderKeyPlace("OPENAI_API_KEY", "hermes_cli/auth.py:192"),
    "anthropic": ProviderKeyPlace("ANTHROPIC_API_KEY", "hermes_cli/auth.py:312, agent/anthropic_adapter.py:1300"),
    "gemini": ProviderKeyPlace("GOOGLE_API_KEY", "hermes_cli/auth.py:235"),
    "deepseek": ProviderKeyPlace("DEEPSEEK_API_KEY", "hermes_cli/auth.py:344"),
    "xai": ProviderKeyPlace("XAI_API_KEY", "hermes_cli/auth.py:352"),
    "zai": ProviderKeyPlace("GLM_API_KEY", "hermes_cli/auth.py:243"),
    "kimi-coding": ProviderKeyPlace("KIMI_API_KEY", "hermes_cli/auth.py:251"),
    "minimax": ProviderKeyPlace("MINIMAX_API_KEY", "hermes_cli/auth.py:293"),
    "alibaba": ProviderKeyPlace("DASHSCOPE_API_KEY", "hermes_cli/auth.py:320"),
    "nvidia": ProviderKeyPlace("NVIDIA_API_KEY", "hermes_cli/auth.py:360"),
    "huggingface": ProviderKeyPlace("HF_TOKEN", "hermes_cli/auth.py:397"),
    "ollama-cloud": ProviderKeyPlace("OLLAMA_API_KEY", "hermes_cli/auth.py:421"),
}
"""Provider -> where its key goes. Providers Hermes knows but not listed here (OAuth logins,
AWS or Vertex credential chains) are accepted without `api_key`: their credentials are not one
key hermes-infra could place."""

ALIASES = {"ollama": CUSTOM, "vllm": CUSTOM, "llamacpp": CUSTOM, "llama.cpp": CUSTOM, "llama-cpp": CUSTOM,
           "claude": "anthropic", "claude-code": "anthropic", "google": "gemini", "google-gemini": "gemini",
           "grok": "xai", "x-ai": "xai", "glm": "zai", "z-ai": "zai", "kimi": "kimi-coding", "moonshot": "kimi-coding",
           "hf": "huggingface"}
"""Names Hermes maps to another provider (hermes_cli/auth.py:1756-1790): the key goes where the
provider they stand for reads it."""

REFUSED = {"openai": "openai-api"}
"""Names Hermes 0.19.0 refuses ("Unknown provider 'openai'", hermes_cli/auth.py:1806), and the
name to write instead."""

KEY_ENVS = frozenset(place.env for place in PROVIDER_KEYS.values() if place.env)


def canonical(provider: str) -> str:
    return ALIASES.get(provider, provider)


def key_place(provider: str | None) -> ProviderKeyPlace | None:
    """Where the key of `provider` goes; None when hermes-infra does not know (no `api_key` then)."""
    return PROVIDER_KEYS.get(canonical(provider or ""))
