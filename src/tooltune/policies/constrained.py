"""Greedy decoding under a `CallGrammar`: the best token the grammar allows.

The decode loop (`tooltune.policies.sampling.generate_tokens`) hands each constrained row's
chosen tokens here: the model's own choice stands where the grammar allows it (nearly always),
else the next best token that it allows replaces it. After guesses, the tokens after a replaced
one are dropped, since they were chosen after a token the row no longer has.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from tooltune.call_grammar import CallGrammar

# Candidates read per batch when the model's first choice is refused: a refused key or name
# usually finds an allowed token within the first few dozen.
CANDIDATES = 256


# The class of every first character outside ASCII, tested as one: outside ASCII a call's
# grammar allows a character inside a string or nowhere
OTHER = "é"


class TokenPieces(list):
    """Each token id's text on its own (a piece of a character several tokens share reads
    as U+FFFD, which only a JSON string accepts, as it accepts the whole character), and the
    ids grouped by their first character (`groups`)."""

    _groups: dict[str, torch.Tensor] | None = None

    def groups(self) -> dict[str, torch.Tensor]:
        """Token ids by first character: each ASCII character its own group, every other
        character the group `OTHER`. Where the model's choice is refused, the grammar is
        asked about each group's first character before any of its tokens: a refused call's
        way on (a comma where the model wanted to close before the required arguments) can
        rank 48,000th of 49,152, and a search token by token took 0.7 s."""
        if self._groups is None:
            ids: dict[str, list[int]] = {}
            for token, piece in enumerate(self):
                first = piece[:1]
                ids.setdefault(first if first.isascii() else OTHER, []).append(token)
            self._groups = {first: torch.tensor(group) for first, group in ids.items()}
        return self._groups


def token_pieces(decode: Callable[[list[int]], str], vocab_size: int) -> TokenPieces:
    """Each token's text on its own (`TokenPieces`)."""
    return TokenPieces(decode([i]) for i in range(vocab_size))


def allowed(grammar: CallGrammar, text: str, token: int, pieces: Sequence[str],
            eos: set[int]) -> bool:  # fmt: skip
    """Whether ``token`` may follow the turn ``text``: an end token only where no call is
    open."""
    if token in eos:
        return grammar.closed(text)
    if token >= len(pieces):  # a padding column of the output layer
        return False
    return grammar.allows(text + pieces[token], len(text))


def best_allowed(grammar: CallGrammar, text: str, logits: torch.Tensor, pieces: Sequence[str],
                 eos: set[int]) -> int:  # fmt: skip
    """The most likely token of ``logits`` [V] that the grammar allows after ``text`` (the
    most likely token of all where it allows none, which a grammar with every single
    character in the vocabulary never does). With `TokenPieces`, the tokens whose first
    character the grammar allows are read first. The search runs on the CPU, where the groups'
    ids are: indexing them with a CUDA tensor of positions would fail."""
    logits = logits.cpu()  # a no-op on the CPU; one row's copy on CUDA, only where refused
    if isinstance(pieces, TokenPieces):
        groups = [ids for first, ids in pieces.groups().items()
                  if first == "" or grammar.allows(text + first, len(text))]  # fmt: skip
        groups.append(torch.tensor(sorted(eos), dtype=torch.long))
        candidates = torch.cat(groups)
        order = candidates[torch.argsort(logits[candidates], descending=True)]
        for token in order.tolist():
            if allowed(grammar, text, token, pieces, eos):
                return token
    order = torch.argsort(logits, descending=True)  # an OTHER character only an enum allows
    for chunk in order.split(CANDIDATES):
        for token in chunk.tolist():
            if allowed(grammar, text, token, pieces, eos):
                return token
    return int(order[0])


def constrain(
    new: list[tuple[int, float]],
    grammar: CallGrammar,
    text: str,
    logits: torch.Tensor,
    pieces: Sequence[str],
    eos: set[int],
) -> tuple[list[tuple[int, float]], str]:
    """A row's new (token, log-prob) pairs of one step, position k chosen from ``logits[k]``
    ([len(new), V], or [V] for one), kept up to the first the grammar refuses, which is
    replaced by the best it allows; returns them and the row's text after them."""
    rows = logits if logits.dim() == 2 else logits[None]
    out = []
    for k, (token, logprob) in enumerate(new):
        if allowed(grammar, text, token, pieces, eos) or not grammar.allows(text):
            out.append((token, logprob))  # allowed, or past a refusal nothing could avoid
            text += "" if token in eos or token >= len(pieces) else pieces[token]
            continue
        token = best_allowed(grammar, text, rows[k], pieces, eos)
        logprob = float(torch.log_softmax(rows[k].float(), dim=-1)[token])
        out.append((token, logprob))
        text += "" if token in eos else pieces[token]
        break
    return out, text
