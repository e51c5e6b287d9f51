"""The part of an OpenAI chat request Keel validates; every other field passes through."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.values import ResourceId, Text, check_json

MAX_MESSAGES = 1000
MAX_CONTENT_CHARS = 200_000


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    # Text, or the list-of-parts form (images, audio) that providers accept as is.
    content: Text | list[dict[str, Any]] | None = Field(default=None)


ConversationId = ResourceId


class ConversationRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: ConversationId


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=200)
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    stream: bool = False
    # Keel's extension: persist this turn into a stored conversation after success.
    conversation_id: ConversationId | None = None
    # OpenAI's spelling (Responses API): an id or {"id": ...}; folded into conversation_id.
    conversation: ConversationId | ConversationRef | None = None

    @model_validator(mode="after")
    def _one_conversation(self) -> ChatRequest:
        if self.conversation is not None:
            named = (
                self.conversation if isinstance(self.conversation, str) else self.conversation.id
            )
            if self.conversation_id not in (None, named):
                raise ValueError("conversation and conversation_id name different conversations")
            self.conversation_id = named
        return self

    @model_validator(mode="after")
    def _forwardable(self) -> ChatRequest:
        # Pass-through fields go to the provider as sent: they must be JSON it can parse
        # (no Infinity, NaN or 1e400, which the JSON parser turns into infinity).
        check_json(self.model_extra)
        for message in self.messages:
            check_json(message.model_extra)
            if isinstance(message.content, list):
                check_json(message.content)
        return self


def content_chars(message: ChatMessage) -> int:
    if isinstance(message.content, str):
        return len(message.content)
    if isinstance(message.content, list):
        return sum(len(str(part.get("text", ""))) for part in message.content)
    return 0
