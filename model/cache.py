"""Decode cache of the looped model: only what the next token needs.

Per sequence and physical layer (docs/model.md, "Cache"):

* loop 0: the full post-RoPE K/V of every position (the only cache that grows with the sequence),
  written in place into a preallocated buffer: `reserve(n)` (which `generate` calls with its
  maximum length) sizes it once, so a decode step writes its new positions and copies nothing;
  without a reservation the buffer is sized to the prefill and doubles when it is full;
* loop r >= 1: the K/V of the last `loop_window + 1` positions (65 for V2, 64 for V1), a sliding
  buffer the local branch reads; older entries are dropped;
* V2 only: the hidden carry, loop r's (normed) output at the last processed position for
  r = 0 ... R-2, the input of loop r + 1 at the next position.

Memory per token is therefore the one of a dense model of the same width and depth; the loop
buffers add a constant `(R - 1) * (W + 1)` positions.

Rollback (assisted decoding): after `activate_past_recording()` the loop buffers and the carries
keep every position until the next `crop(-n)`, which removes the last n positions of every part
and shrinks the buffers back to the window, as transformers' sliding-window caches do.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache


class LoopCoderCache(Cache):
    """Cache of `LoopCoderModel`; created by the model (or `generate`) when none is given.

    Args:
        config (LoopCoderConfig): the model configuration (layers, loops, window).
        max_cache_len (int, Optional): positions to preallocate for loop 0 (see `reserve`).
    """

    def __init__(self, config, max_cache_len: int | None = None, **kwargs):
        super().__init__(layers=[])
        self.num_layers = config.num_hidden_layers
        self.num_loops = config.num_loops
        self.local_size = config.local_cache_size
        # keys0[layer] / values0[layer]: loop 0's buffers [B, HKV, capacity, D]; the first loop0_length[layer]
        # positions are filled
        self.keys0: list[torch.Tensor | None] = [None] * self.num_layers
        self.values0: list[torch.Tensor | None] = [None] * self.num_layers
        self.loop0_length = [0] * self.num_layers
        self.reserved = max_cache_len or 0
        # local[r][layer] = (keys, values) of loop r's last `local_size` positions, [B, HKV, <=S, D]
        self.local: list[list[tuple[torch.Tensor, torch.Tensor] | None]] = [
            [None] * self.num_layers for _ in range(self.num_loops)
        ]
        # carry[r] = loop r's output at the last position it processed, [B, d] (r < R - 1)
        self.carry: list[torch.Tensor | None] = [None] * max(self.num_loops - 1, 0)
        # positions processed so far by each loop (equal outside a chunked prefill)
        self.seen = [0] * self.num_loops
        # With past recording (`activate_past_recording`, used by assisted decoding) the loop buffers keep
        # every position until the next `crop`, and carry_history[r] `[B, n, d]` keeps the carries of the
        # positions since then, so that `crop` can take back the tokens a verification step rejected.
        self.record_past = False
        self.carry_history: list[torch.Tensor | None] = [None] * max(self.num_loops - 1, 0)
        self._carry_before_history: list[torch.Tensor | None] = list(self.carry)
        self._seen_before_history = 0

    # -- loop 0: full K/V ------------------------------------------------------------------
    def reserve(self, max_cache_len: int) -> None:
        """Sizes loop 0's buffers for `max_cache_len` positions (at their first write, or now if they exist)."""
        self.reserved = max(self.reserved, max_cache_len)
        for layer_idx, keys in enumerate(self.keys0):
            if keys is not None and keys.shape[-2] < max_cache_len:
                self._resize_loop0(layer_idx, max_cache_len)

    def _resize_loop0(self, layer_idx: int, capacity: int) -> None:
        length = self.loop0_length[layer_idx]
        for buffers in (self.keys0, self.values0):
            old = buffers[layer_idx]
            new = old.new_empty((*old.shape[:-2], capacity, old.shape[-1]))
            new[..., :length, :] = old[..., :length, :]
            buffers[layer_idx] = new

    def update_loop0(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int):
        """Writes `[B, HKV, T, D]` K/V of loop 0 after the filled positions and returns the layer's filled K/V
        (views of the buffers)."""
        length = self.loop0_length[layer_idx]
        end = length + key.shape[-2]
        if self.keys0[layer_idx] is None:
            shape = (*key.shape[:-2], max(end, self.reserved), key.shape[-1])
            self.keys0[layer_idx] = key.new_empty(shape)
            self.values0[layer_idx] = value.new_empty(shape)
        elif end > self.keys0[layer_idx].shape[-2]:
            # past the reservation: doubling keeps the copies amortised O(1) per position
            self._resize_loop0(layer_idx, max(end, 2 * self.keys0[layer_idx].shape[-2]))
        self.keys0[layer_idx][..., length:end, :] = key
        self.values0[layer_idx][..., length:end, :] = value
        self.loop0_length[layer_idx] = end
        return self.loop0(layer_idx)

    def loop0(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        length = self.loop0_length[layer_idx]
        return self.keys0[layer_idx][..., :length, :], self.values0[layer_idx][..., :length, :]

    # -- loops >= 1: sliding buffers -----------------------------------------------------
    def local_with(self, key: torch.Tensor, value: torch.Tensor, loop: int, layer_idx: int):
        """Returns (keys, values, first_slot) of loop `loop`'s buffer followed by the new K/V, and stores
        the last `local_size` of them. `first_slot` is the sequence position of the first returned key."""
        entry = self.local[loop][layer_idx]
        # seen[loop] counts the positions before this step; the buffer holds the last ones of them
        first_slot = self.seen[loop] - (0 if entry is None else entry[0].shape[-2])
        if entry is not None:
            key = torch.cat([entry[0], key], dim=-2)
            value = torch.cat([entry[1], value], dim=-2)
        if self.record_past:
            self.local[loop][layer_idx] = (key, value)
        else:
            self.local[loop][layer_idx] = (key[..., -self.local_size :, :], value[..., -self.local_size :, :])
        return key, value, first_slot

    def local_length(self, loop: int) -> int:
        """Entries currently in loop `loop`'s buffers (the same in every layer between steps)."""
        entry = self.local[loop][0]
        return 0 if entry is None else entry[0].shape[-2]

    def advance(self, loop: int, num_tokens: int) -> None:
        """Marks `num_tokens` more positions as processed by `loop` (after all its layers ran)."""
        self.seen[loop] += num_tokens

    def set_carry(self, loop: int, hidden: torch.Tensor) -> None:
        """Loop `loop`'s outputs `[B, n, d]` at the positions just processed (or `[B, d]` for one position)."""
        if loop >= self.num_loops - 1:
            return
        if hidden.dim() == 2:
            hidden = hidden[:, None]
        self.carry[loop] = hidden[:, -1]
        if self.record_past:
            previous = self.carry_history[loop]
            self.carry_history[loop] = hidden if previous is None else torch.cat([previous, hidden], dim=1)

    # -- rollback (assisted decoding) ----------------------------------------------------------
    def activate_past_recording(self) -> None:
        """Keeps what `crop` needs to take back tokens: every loop buffer entry and carry until the next crop."""
        self.record_past = True
        self._carry_before_history = list(self.carry)
        self._seen_before_history = self.seen[0]

    def deactivate_past_recording(self) -> None:
        """Back to constant memory: the buffers shrink to the window and stop keeping older positions."""
        self.crop(0)
        self.record_past = False

    @property
    def is_croppable(self) -> bool:
        return True

    def crop(self, tokens_to_remove: int) -> None:
        """Removes the last `-tokens_to_remove` positions (a non-positive count, as transformers' caches), then
        shrinks the loop buffers back to their working size. Needs past recording to remove any position."""
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes the negative number of positions to remove, got {tokens_to_remove}")
        remove = -tokens_to_remove
        if remove:
            recorded = self.seen[0] - self._seen_before_history if self.record_past else 0
            if recorded < remove:
                raise RuntimeError(
                    f"cannot remove {remove} position(s): the cache recorded {recorded} since the last crop; "
                    "call activate_past_recording() before the forward whose positions may be taken back"
                )
            # loop 0 keeps its buffers; the removed positions are overwritten by the next write
            self.loop0_length = [max(length - remove, 0) for length in self.loop0_length]
            for loop in range(1, self.num_loops):
                self.local[loop] = [
                    None if e is None else (e[0][..., :-remove, :], e[1][..., :-remove, :]) for e in self.local[loop]
                ]
            for loop, history in enumerate(self.carry_history):
                if history is not None:
                    kept = history.shape[1] - remove
                    self.carry[loop] = history[:, kept - 1] if kept > 0 else self._carry_before_history[loop]
            self.seen = [seen - remove for seen in self.seen]
        # back to the working size: the window of every loop buffer, no carry history
        for loop in range(1, self.num_loops):
            self.local[loop] = [
                None if e is None else (e[0][..., -self.local_size :, :], e[1][..., -self.local_size :, :])
                for e in self.local[loop]
            ]
        self.carry_history = [None] * len(self.carry_history)
        self._carry_before_history = list(self.carry)
        self._seen_before_history = self.seen[0]

    # -- transformers Cache API ------------------------------------------------------------
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen[-1] if self.num_loops else 0

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.seen[0] + query_length, 0

    @property
    def is_compileable(self) -> bool:
        return False

    @property
    def is_initialized(self) -> bool:
        return self.seen[0] > 0

    @property
    def batch_size(self) -> int:
        return -1 if self.keys0[0] is None else self.keys0[0].shape[0]

    def _map(self, fn) -> None:
        self.keys0 = [None if t is None else fn(t) for t in self.keys0]
        self.values0 = [None if t is None else fn(t) for t in self.values0]
        self._map_loop_buffers_and_carries(fn)

    def _map_loop_buffers_and_carries(self, fn) -> None:
        self.local = [[None if e is None else (fn(e[0]), fn(e[1])) for e in row] for row in self.local]
        self.carry = [None if t is None else fn(t) for t in self.carry]
        self.carry_history = [None if t is None else fn(t) for t in self.carry_history]
        self._carry_before_history = [None if t is None else fn(t) for t in self._carry_before_history]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        # loop 0 in place (its filled part only), so the buffers stay where they are
        for buffers in (self.keys0, self.values0):
            for layer_idx, buffer in enumerate(buffers):
                if buffer is not None:
                    filled = buffer[..., : self.loop0_length[layer_idx], :]
                    filled.copy_(filled.index_select(0, beam_idx.to(buffer.device)))
        self._map_loop_buffers_and_carries(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map(lambda t: t[indices, ...])

    def reset(self) -> None:
        self.__init__(_ConfigView(self.num_layers, self.num_loops, self.local_size), self.reserved)

    def nbytes(self) -> int:
        """Bytes held by the cache tensors (loop-0 buffers, loop buffers, hidden carries)."""
        tensors = [t for t in self.keys0 + self.values0 + self.carry + self.carry_history if t is not None]
        tensors += [t for row in self.local for e in row if e is not None for t in e]
        return sum(t.numel() * t.element_size() for t in tensors)

    def __len__(self) -> int:
        return self.num_layers

    def __repr__(self) -> str:
        return f"LoopCoderCache(layers={self.num_layers}, loops={self.num_loops}, seen={self.seen})"


class _ConfigView:
    def __init__(self, num_hidden_layers: int, num_loops: int, local_cache_size: int):
        self.num_hidden_layers = num_hidden_layers
        self.num_loops = num_loops
        self.local_cache_size = local_cache_size


__all__ = ["LoopCoderCache"]
