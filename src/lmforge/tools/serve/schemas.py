"""Request and response bodies (pydantic): what ``/openapi.json`` and ``/docs`` show.

Types are strict, so a wrong type is a 422 rather than a silent conversion (``"max_tokens": "5"`` is
refused; an integer where a number is expected is fine). Unknown fields are ignored, as OpenAI's
API does for fields it does not know; known fields that lmforge cannot honour are refused (400).
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

Number = Union[StrictInt, StrictFloat]


def _valid_unicode(text: str) -> str:
    """JSON may carry lone surrogates (``"\\ud800"``), which are not text: no tokenizer or UTF-8 reply takes them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"expected valid Unicode text, got a lone surrogate {text[e.start]!r} at character "
                         f"{e.start + 1}") from None
    return text


Text = Annotated[StrictStr, AfterValidator(_valid_unicode)]


class StreamOptions(BaseModel):
    include_usage: Optional[StrictBool] = Field(None, description="send a last chunk with `usage` and no choices")


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: Text = Field(description="a served model id (GET /v1/models)")
    prompt: Union[Text, list[Text], list[StrictInt], list[list[StrictInt]]] = Field(
        "", description="a string, a list of strings, a list of token ids or a list of such lists; "
                        "an empty string starts from the tokenizer's bos token")
    max_tokens: Optional[StrictInt] = Field(16, ge=0, description="tokens to generate at most (capped by the server)")
    temperature: Optional[Number] = Field(1.0, ge=0, le=2, description="0 = greedy (so are values below 1e-20)")
    top_p: Optional[Number] = Field(1.0, gt=0, le=1, description="nucleus sampling; values below 1e-20 keep the most "
                                    "likely token only")
    top_k: Optional[StrictInt] = Field(None, ge=0, description="lmforge extension: sample among the k most likely tokens")
    n: Optional[StrictInt] = Field(1, ge=1, description="completions per prompt")
    stop: Union[Text, list[Text], None] = Field(None, description="up to 4 strings; generation stops "
                                                "before the first one, which is not returned")
    seed: Optional[StrictInt] = Field(None, ge=-(2**62), le=2**62, description="reproducible sampling; choice i "
                                      "uses seed + i")
    stream: Optional[StrictBool] = Field(False, description="server-sent events, OpenAI's chunk format, then [DONE]")
    stream_options: Optional[StreamOptions] = None
    user: Optional[Text] = None
    # accepted for compatibility; values other than these defaults are refused (400)
    echo: Optional[StrictBool] = False
    logprobs: Optional[StrictInt] = None
    best_of: Optional[StrictInt] = None
    suffix: Optional[Text] = None
    presence_penalty: Optional[Number] = 0
    frequency_penalty: Optional[Number] = 0
    logit_bias: Optional[dict[Text, Number]] = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: None = None
    finish_reason: Optional[Literal["stop", "length"]]


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Optional[Usage] = None


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: Text = Field(description="a served classifier id (GET /v1/models)")
    input: Union[Text, list[Text]] = Field(description="a text or a list of texts; each is truncated to "
                                           "the model's max_length tokens. For an image model: base64 image files "
                                           "(PNG, JPEG, ...; a data: URL is fine)")


class ClassifyResult(BaseModel):
    object: Literal["classification"] = "classification"
    index: int
    label: str = Field(description="the most probable label")
    score: float = Field(description="its probability")
    probabilities: dict[str, float] = Field(description="every label's probability (they sum to 1)")


class ClassifyUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class ClassifyResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[ClassifyResult]
    usage: ClassifyUsage


class TranslateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: Text = Field(description="a served translation model id (GET /v1/models)")
    input: Union[Text, list[Text]] = Field(description="a text or a list of texts (source sentences); each is "
                                           "truncated to the model's context_length tokens; a blank one gives \"\"")
    beam: Optional[StrictInt] = Field(None, ge=1, description="1 = greedy, more = beam search with that many "
                                      "hypotheses (default the run's translate.beam; capped by the server)")


class TranslateResult(BaseModel):
    object: Literal["translation"] = "translation"
    index: int
    text: str = Field(description="the translation")


class TranslateResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[TranslateResult]
    usage: Usage


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    kind: Literal["completion", "classification", "translation"]
    family: str
    context_length: int
    labels: Optional[list[str]] = None
    compression: Optional[str] = None
    beam: Optional[int] = Field(None, description="translation: the default beam width")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: str


class ErrorResponse(BaseModel):
    error: ErrorDetail
