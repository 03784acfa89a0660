"""The topics rail: banned words, and banned topics by meaning (MiniLM similarity to short descriptions), so a
paraphrase with none of the description's words is caught and ordinary prompts are not."""

from __future__ import annotations

import pytest

from guardrails.guard import Guard
from guardrails.policy import PolicyConfig
from guardrails.rails.topics import MAX_PIECES, pieces

MEDICAL = "medical diagnosis, treatment or medication advice for a person's symptoms or condition"


@pytest.fixture(scope="module")
def guard(embedding_model_dir):
    return Guard(PolicyConfig.model_validate({"input_rails": [
        {"rail": "topics", "banned": ["competitor pricing"], "descriptions": [MEDICAL]}]}))


def test_paraphrases_of_a_banned_topic_are_caught_by_meaning(guard):
    for text in ("My chest hurts when I breathe and I feel dizzy. Which pills should I take?",
                 "I've had a rash on my arm for a week, what is it and how do I treat it?"):
        v = guard.check_input([{"role": "user", "content": text}])
        assert not v.allowed and v.rail == "topics", text
        assert v.findings[0].label == f"topic:{MEDICAL}" and v.findings[0].score >= 0.25
    for text in ("What is the capital of France?", "Write a haiku about autumn leaves.",
                 "How do I rotate an API key in the gateway?", "Summarise the history of the printing press."):
        assert guard.check_input([{"role": "user", "content": text}]).allowed, text
    v = guard.check_input([{"role": "user", "content": "What is the competitor pricing for plan B?"}])
    assert not v.allowed and v.findings[0].label == "banned:competitor pricing"


def test_a_topic_at_the_end_of_a_long_text_is_still_seen(guard):
    filler = "The quarterly report shows steady growth in every region and the team is hiring. " * 60
    text = filler + "By the way, my child has a fever of 40 degrees, what dose of ibuprofen should I give?"
    assert not guard.check_input([{"role": "user", "content": text}]).allowed
    parts = pieces(text)
    assert len(parts) == MAX_PIECES and "ibuprofen" in parts[-1]
