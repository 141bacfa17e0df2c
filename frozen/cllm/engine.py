"""Generation. The model's KV cache holds one sequence per slot; one scheduler task advances every
busy slot together (a new slot's whole prompt, the others' last token, in one decode), samples each
slot's next token with its own llm.Sampler. The decode runs in the model's decoder thread while the
loop goes on, so the server answers other requests while it computes. Requests beyond the slots wait
in a bounded queue."""
import asyncio
import sys
import time

import llm

from cllm.chat import templates
from cllm.log import log


class Busy(Exception):
    """Every slot is busy and the wait queue is full."""


class ContextExceeded(Exception):
    def __init__(self, n_prompt_tokens, n_ctx):
        super().__init__("request ({} tokens) exceeds the available context size ({} tokens), try increasing it"
                         .format(n_prompt_tokens, n_ctx))
        self.n_prompt_tokens = n_prompt_tokens
        self.n_ctx = n_ctx


def utf8_length(b):
    """The length of the UTF-8 sequence lead byte b begins: 1 (ASCII) to 4, 0 if it begins none."""
    return 1 if b < 0x80 else 2 if 0xC2 <= b < 0xE0 else 3 if 0xE0 <= b < 0xF0 else 4 if 0xF0 <= b < 0xF5 else 0


def utf8_complete(data):
    """How many leading bytes of data end on a UTF-8 character boundary."""
    n = len(data)
    for back in range(1, min(4, n) + 1):
        b = data[n - back]
        if b & 0xC0 != 0x80:                 # a lead byte (or ASCII, or no lead at all): complete?
            need = utf8_length(b) or 1
            return n if need <= back else n - back
    return n


def decode_lossy(data):
    """UTF-8 bytes as text with U+FFFD for each maximal piece that is no character (a model can
    emit any byte: its byte tokens need not make valid UTF-8): a stray byte is one, and so is a
    sequence cut short, however many of its bytes came (Unicode's "maximal subpart" practice, what
    llama-server's JSON output gives)."""
    try:
        return data.decode()
    except UnicodeError:
        pass
    out = []
    i, n = 0, len(data)
    while i < n:
        b = data[i]
        need = utf8_length(b)
        if need == 1:
            out.append(chr(b))
            i += 1
            continue
        # the second byte's range depends on the first (no overlong forms, surrogates, or past U+10FFFF)
        lo, hi = (0xA0, 0xBF) if b == 0xE0 else (0x80, 0x9F) if b == 0xED else (0x90, 0xBF) if b == 0xF0 \
            else (0x80, 0x8F) if b == 0xF4 else (0x80, 0xBF)
        j = i + 1
        while need and j < i + need and j < n and (lo if j == i + 1 else 0x80) <= data[j] <= (hi if j == i + 1 else 0xBF):
            j += 1
        if need and j == i + need:
            out.append(data[i:j].decode())
        else:
            out.append("\ufffd")
        i = max(j, i + 1)
    return "".join(out)


def partial_stop(text, stops):
    """Length of the longest end of text that begins one of the stop strings."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:k]):
                hold = k
                break
    return hold


class Pending:
    """What a request waits for: done (cancelled, or failed with error), and an event when it changes."""

    def __init__(self):
        self.done = False
        self.cancelled = False
        self.error = None
        self.changed = asyncio.Event()

    async def wait_done(self):
        while not self.done:
            self.changed.clear()
            await self.changed.wait()
        if self.error:
            raise self.error


class Task(Pending):
    """One request's generation: its prompt, limits, sampler, and the text produced so far."""
    next_id = 0

    def __init__(self, prompt, sampler, n_predict=-1, stop=(), return_tokens=False, n_probs=0, cache_prompt=True):
        super().__init__()
        self.id = Task.next_id
        Task.next_id += 1
        self.prompt = prompt
        self.sampler = sampler
        self.n_predict = n_predict
        self.stop = [s for s in stop if s]
        self.return_tokens = return_tokens
        self.n_probs = n_probs
        self.cache_prompt = cache_prompt
        self.preserved = ()             # token ids whose text is kept though special (a tool-call tag)
        self.params = {}                # the settings it runs with, for generation_settings
        self.return_progress = False    # note prompt_progress (llama-server's return_progress)
        self.progress = []              # ... {total, cache, processed, time_ms} as the prompt is read
        self.progress_sent = 0
        self.t_start = 0                # ticks_ms when a slot took it
        self.id_slot = -1               # the slot it must run in (llama-server's id_slot), or -1: any
        self.t_max_predict_ms = -1      # past this much generating, stop at a newline (llama-server's)
        self.n_keep, self.n_discard = 0, 0  # a context shift keeps n_keep tokens, drops n_discard (0: half)
        self.truncated = False          # a context shift dropped some of it
        self.n_cached = 0               # prompt tokens found in the slot's KV cache (not decoded again)
        self.draft_n, self.draft_accepted = 0, 0    # speculative draft tokens tried, kept
        self.probs = []                 # with n_probs: (token, p, [(id, p), ...]) per generated token
        self.probs_sent = 0
        self.tokens = []
        self.text = ""
        self.sent = 0                   # characters of text handed to the client
        self.undecoded = b""            # a UTF-8 character cut between tokens
        self.stop_type = "none"
        self.stopping_word = ""
        self.slot = None
        self.prompt_ms = 0.0            # as llama-server: start of the prompt's decode to the first token
        self.predicted_ms = 0.0         # first token sampled to the last, all the server did between
        self.n_sampled = 0              # tokens sampled, an end-of-generation token too
        self.t_last = 0                 # ticks_us of the last sample (or of the prompt's decode)

    def cancel(self):
        if not self.done:
            self.cancelled = True
            self.finish("none")

    def finish(self, stop_type):
        self.stop_type = stop_type
        self.done = True
        self.changed.set()

    def fail(self, error):
        self.error = error
        self.finish("none")

    def add_piece(self, piece):
        """Append a token's bytes; stop at a stop string. Returns True when a stop string ended it."""
        data = self.undecoded + piece
        n = utf8_complete(data)
        self.undecoded = data[n:]
        if not n:
            return False
        start = max(0, len(self.text) - max([len(s) for s in self.stop] or [0]))
        self.text += decode_lossy(data[:n])
        first = None
        for s in self.stop:
            i = self.text.find(s, start)
            if i >= 0 and (first is None or i < first[0]):
                first = (i, s)
        if first:
            self.text = self.text[:first[0]]
            self.stopping_word = first[1]
            return True
        self.changed.set()
        return False

    def ready_text(self):
        """The text not yet handed out, less an end that may still become a stop string."""
        end = len(self.text) if self.done else len(self.text) - partial_stop(self.text, self.stop)
        chunk = self.text[self.sent:end]
        self.sent = max(self.sent, end)
        return chunk

    async def result(self):
        await self.wait_done()
        self.sent = len(self.text)
        return self.text

    def note_progress(self, processed):
        if self.return_progress:
            self.progress.append({"total": len(self.prompt), "cache": self.n_cached, "processed": processed,
                                  "time_ms": time.ticks_diff(time.ticks_ms(), self.t_start)})
            self.changed.set()

    def new_progress(self):
        out = self.progress[self.progress_sent:]
        self.progress_sent = len(self.progress)
        return out

    def new_probs(self):
        """The probabilities (see probs) not yet handed out."""
        out = self.probs[self.probs_sent:]
        self.probs_sent = len(self.probs)
        return out

    def timings(self):
        n_prompt, n_gen = len(self.prompt) - self.n_cached, len(self.tokens)
        steps = self.n_sampled - 1      # the first token comes from the prompt's decode
        out = {
            "cache_n": self.n_cached,
            "prompt_n": n_prompt,
            "prompt_ms": self.prompt_ms,
            "prompt_per_token_ms": self.prompt_ms / n_prompt if n_prompt else 0.0,
            "prompt_per_second": 1000.0 * n_prompt / self.prompt_ms if self.prompt_ms else 0.0,
            "predicted_n": n_gen,
            "predicted_ms": self.predicted_ms,
            "predicted_per_token_ms": self.predicted_ms / steps if steps > 0 else 0.0,
            "predicted_per_second": 1000.0 * steps / self.predicted_ms if steps > 0 and self.predicted_ms else 0.0,
        }
        if self.draft_n:                # as llama-server: only when there were drafts
            out["draft_n"], out["draft_n_accepted"] = self.draft_n, self.draft_accepted
        return out


def common_prefix(a, b):
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class EmbedTask(Pending):
    """One request's embeddings (or rerank scores): its inputs' tokens, read a group at a time in a
    context of their own between the generation steps; results: one array per input."""

    def __init__(self, inputs, normalize=2):
        super().__init__()
        self.inputs = inputs
        self.normalize = normalize
        self.results = []

    def cancel(self):
        if not self.done:
            self.cancelled = True
            self.finish()

    def finish(self):
        self.done = True
        self.changed.set()

    def fail(self, error):
        self.error = error
        self.finish()

    async def result(self):
        await self.wait_done()
        return self.results


class Slot:
    def __init__(self, id):
        self.id = id                    # also the sequence id in the KV cache
        self.task = None
        self.last = None                # the task that ran here most recently (for /slots)
        self.cache = []                 # the tokens of this slot's sequence in the KV cache
        self.pending = []               # tokens to decode in the next step
        self.used = 0                   # when it last took a task (least recently used goes first)


class Engine:
    POLL_MS = 2             # how often the scheduler asks whether the decoder thread is done
    EMBED_INPUTS = 64       # inputs read in one embeddings decode (llm's most), of n_batch tokens in all
    PREFILL_STRETCH = 2     # a prompt read beside generating slots makes their step at most this much longer

    def __init__(self, settings):
        self.settings = settings
        self.model = None
        self.meta = None
        self.spec = None                # llm.Speculative with spec= (n-gram drafts), else None
        self.state = "loading"          # "loading", "ready" or "error"
        self.load_error = None
        self.slots = [Slot(i) for i in range(settings.parallel)]
        self.waiting = []
        self.embeds = []                # EmbedTasks, first come first served
        self.uses = 0
        self.wake = asyncio.Event()
        self.ms_per_token = (None, None)    # decode cost of a generated token, of a prompt token
        self.decoding = False
        self.stats = {"prompt_tokens": 0, "prompt_cached": 0, "prompt_ms": 0.0, "predicted_tokens": 0,
                      "predicted_ms": 0.0, "decodes": 0, "busy_slots": 0, "requests": 0, "rejected": 0,
                      "n_tokens_max": 0, "restarts": 0, "draft_tokens": 0, "draft_accepted": 0, "drafts": 0,
                      "embedded_tokens": 0}

    def load(self):
        s = self.settings
        try:
            if s.spec:              # llama-server's --spec-type ngram-*: the model verifies drafts of n_max
                kind = "ngram-simple" if s.spec == "ngram" else s.spec
                self.spec = llm.Speculative(s.parallel, kind, size_n=s.spec_size_n, size_m=s.spec_size_m)
            self.model = llm.Model(s.model, n_ctx=s.n_ctx, n_seq=s.parallel, flash_attn=s.flash_attn,
                                   pooling=s.pooling or None, n_draft=self.spec.n_max() if self.spec else 0,
                                   progress=True)
        except Exception as e:
            self.state, self.load_error = "error", e
            raise
        self.meta = self.model.meta()   # fixed once loaded: read it here, not per request
        self.chat = templates(self.model, s.chat_template)
        self.n_ctx = self.meta["n_ctx"]
        self.n_ctx_slot = self.n_ctx // s.parallel
        self.state = "ready"

    def sampler(self, **options):
        """An llm.Sampler for this model (its keyword arguments and defaults)."""
        return llm.Sampler(self.model, **options)

    def submit(self, task):
        """Queue a task for the next free slot; raises ContextExceeded or Busy."""
        if len(task.prompt) >= self.n_ctx_slot:
            raise ContextExceeded(len(task.prompt), self.n_ctx_slot)
        free = sum(1 for s in self.slots if s.task is None)
        if len(self.waiting) - free >= self.settings.queue:
            self.stats["rejected"] += 1
            raise Busy()
        self.stats["requests"] += 1
        self.waiting.append(task)
        self.wake.set()
        return task

    def submit_embed(self, task):
        """Queue an EmbedTask; raises Busy past the wait queue's bound."""
        if len(self.embeds) >= self.settings.queue:
            self.stats["rejected"] += 1
            raise Busy()
        self.stats["requests"] += 1
        self.embeds.append(task)
        self.wake.set()
        return task

    def busy_slots(self):
        return [s for s in self.slots if s.task]

    def _assign(self):
        """Waiting tasks to free slots: the slot whose cache shares the longest start with the
        prompt (llama-server's cache_prompt), else the least recently used; only the rest of the
        prompt is decoded (at least its last token, for the logits)."""
        i = 0
        while i < len(self.waiting):
            free = [s for s in self.slots if s.task is None]
            if not free:
                return
            task = self.waiting[i]
            if task.cancelled:
                self.waiting.pop(i)
                continue
            if task.id_slot >= 0:               # that slot only; the tasks behind it go on meanwhile
                free = [s for s in free if s.id == task.id_slot]
                if not free:
                    i += 1
                    continue
            self.waiting.pop(i)
            best, keep = None, -1
            for slot in free:
                n = common_prefix(slot.cache, task.prompt) if task.cache_prompt else 0
                if n > keep or (n == keep and slot.used < best.used):
                    best, keep = slot, n
            keep = min(keep, len(task.prompt) - 1)
            self.model.kv_remove(best.id, keep, -1)
            del best.cache[keep:]
            best.pending = task.prompt[keep:]
            task.n_cached = keep
            self.stats["prompt_cached"] += keep
            self.uses += 1
            best.used = self.uses
            best.task = best.last = task
            task.slot = best.id
            task.sampler.accept(task.prompt, False)     # as llama-server: penalties see the prompt
            task.t_start = time.ticks_ms()
            task.note_progress(keep)            # 0 % of what is to read

    def _release(self, slot):
        slot.task = None
        self.wake.set()

    async def run(self):
        """The scheduler, forever. An exception that escapes it (a bug, or a patch typed at the
        console) fails every request in flight and waiting with a 500, is logged with its
        traceback, and the scheduler starts again with every slot empty."""
        while True:
            try:
                await self.schedule()
            except Exception as e:
                self.stats["restarts"] += 1
                log("engine: {}: {}; failing {} requests and starting again".format(
                    type(e).__name__, e, len(self.waiting) + len(self.busy_slots())))
                sys.print_exception(e)
                self.reset(e)
                await asyncio.sleep_ms(100)     # a fault that recurs at once must not starve the loop

    def reset(self, error):
        """Every task failed with error, every slot and its sequence emptied (after the decode
        that may still run in the background: the KV cache is its until it ends)."""
        while True:
            try:
                if self.model.decode_done():
                    break
            except Exception:       # its error: the tasks fail anyway
                break
            time.sleep_ms(1)
        for task in self.waiting + self.embeds:
            task.fail(error)
        self.waiting, self.embeds = [], []
        for s in self.slots:
            if s.task:
                s.task.fail(error)
                s.task = None
            s.cache, s.pending = [], []
        self.model.kv_remove(-1)

    async def schedule(self):
        """One decode for all busy slots per step."""
        while True:
            self._assign()
            busy = [s for s in self.slots if s.task and not s.task.cancelled]
            for s in self.slots:
                if s.task and s.task.cancelled:
                    self._release(s)
            if self.embeds:                     # a group of embeddings, then the slots' step
                await self.embed_step()
            elif not busy:
                self.wake.clear()
                await self.wake.wait()
                continue
            if busy:
                await self.step(busy)

    async def embed_step(self):
        """The first EmbedTask's next inputs, as many as fit one decode of n_batch tokens."""
        task = self.embeds[0]
        if task.cancelled:
            self.embeds.pop(0)
            return
        group, total = [], 0
        for tokens in task.inputs[len(task.results):]:
            if group and (total + len(tokens) > self.meta["n_batch"] or len(group) == self.EMBED_INPUTS):
                break
            group.append(tokens)
            total += len(tokens)
        try:
            await self.in_decoder(self.model.embed_start, group)
            task.results += self.model.embed_result(task.normalize)
        except Exception as e:
            self.embeds.pop(0)
            task.fail(e)
            return
        self.stats["embedded_tokens"] += total
        if len(task.results) == len(task.inputs):
            self.embeds.pop(0)
            task.finish()

    async def decode(self, items):
        """decode_batch in the model's decoder thread: the loop (HTTP, the console, the streams'
        writes) runs meanwhile, on CPU 0 in turn with it when no other CPU is free."""
        await self.in_decoder(self.model.decode_start, items)

    async def in_decoder(self, start, items):
        """start(items) (decode_start or embed_start), then the loop goes on until it is done."""
        model = self.model
        start(items)
        self.decoding = True                # the KV cache is the decoder's until it is done
        try:
            while not model.decode_done():
                await asyncio.sleep_ms(self.POLL_MS)
        finally:
            self.decoding = False

    def prefill_chunk(self, busy):
        """How many prompt tokens a slot decodes in this step. Alone, all of them (in n_batch pieces
        within one decode); beside slots that are generating, only as many as keep the step within
        PREFILL_STRETCH times a step of theirs alone, so that their streams go on while a long prompt
        is read (vLLM's chunked prefill), from what a token of each kind has cost so far."""
        generating = sum(1 for s in busy if s.task.n_sampled)
        prefilling = len(busy) - generating
        if not generating or not prefilling:
            return 1 << 30
        gen, prompt = self.ms_per_token
        # a prompt token costs less than a generated one only in steps of many tokens (ggml's batch
        # kernels take several columns at once); added to a small step, it costs about as much
        ratio = min(1.0, gen / prompt) if gen and prompt else 1.0
        return max(1, int((self.PREFILL_STRETCH - 1) * generating * ratio / prefilling))

    def measured(self, ms, items, busy):
        """A step's decode time into the running means of ms per token: generation steps (one token
        per slot) and prompt steps (no slot generating); steps of both kinds tell neither apart."""
        gen, prompt = self.ms_per_token
        n = sum(len(item[1]) for item in items)
        if n == len(items) and all(s.task.n_sampled for s in busy):
            gen = ms / n if gen is None else 0.8 * gen + 0.2 * ms / n
        elif not any(s.task.n_sampled for s in busy):
            prompt = ms / n if prompt is None else 0.8 * prompt + 0.2 * ms / n
        self.ms_per_token = (gen, prompt)

    def draft(self, slot):
        """llama-server's n-gram draft for a generating slot: what followed the last time the tokens
        it ends with appeared, as long as the slot's room and the task's n_predict leave."""
        task = slot.task
        if not self.spec or not task.n_sampled or task.n_probs:
            return []
        n_max = self.n_ctx_slot - len(slot.cache) - 3      # what it keeps never fills the slot (advance's check)
        if task.n_predict >= 0:
            n_max = min(n_max, task.n_predict - len(task.tokens) - 1)
        return self.spec.draft(slot.id, slot.cache, slot.pending[0], n_max) if n_max > 0 else []

    async def step(self, busy):
        chunk = self.prefill_chunk(busy)
        items, drafts = [], {}
        for s in busy:
            draft = self.draft(s)
            if draft:
                drafts[s.id] = draft
                items.append((s.id, s.pending + draft, 1 + len(draft)))
            else:
                items.append((s.id, s.pending if len(s.pending) <= chunk else s.pending[:chunk]))
        t0 = time.ticks_us()
        try:
            await self.decode(items)
        except Exception as e:
            for s in busy:
                self.model.kv_remove(s.id)      # what the failed decode left there is unknown
                s.cache = []
                s.task.fail(e)
                self._release(s)
            return
        self.measured(time.ticks_diff(time.ticks_us(), t0) / 1000, items, busy)
        st = self.stats
        st["decodes"] += 1
        st["busy_slots"] += len(busy)
        for s, item in zip(busy, items):
            seq, tokens, task = item[0], item[1], s.task
            if task is None or task.cancelled:  # ended while the decode ran: schedule() frees the slot
                continue
            prompt = not task.n_sampled         # still reading its prompt (the cached start not decoded again)
            if len(s.cache) == task.n_cached:
                task.t_last = t0
            if prompt:
                st["prompt_tokens"] += len(tokens)
            if seq in drafts:
                try:
                    self.verify(s, drafts[seq])
                except Exception as e:
                    task.fail(e)
                    self._release(s)
                continue
            s.cache += tokens
            st["n_tokens_max"] = max(st["n_tokens_max"], len(s.cache))
            if prompt:
                task.note_progress(len(s.cache))
            if len(tokens) < len(s.pending):    # a piece of the prompt: the rest in the next steps
                s.pending = s.pending[len(tokens):]
                continue
            try:                # whatever goes wrong ends this task, never the scheduler
                if self.spec and prompt:
                    self.spec.begin(seq, s.cache)
                token = task.sampler.sample(seq)
                self.timed(task, prompt)
                if task.n_probs and not self.model.is_eog(token):
                    p, top = self.model.probs(seq, task.n_probs, token)
                    task.probs.append((token, p, top))
                self.advance(s, token)
            except Exception as e:
                task.fail(e)
                self._release(s)

    def verify(self, slot, draft):
        """After a decode of the slot's last token and a draft: the draft's tokens the sampler draws
        too, and the one it draws after them (llama-server's common_sampler_sample_and_accept_n); the
        KV cells of the rest go."""
        task, seq = slot.task, slot.id
        ids = task.sampler.sample_n(seq, draft)
        n = len(ids) - 1
        self.spec.accept(seq, n)
        slot.cache += slot.pending + draft[:n]
        self.model.kv_remove(seq, len(slot.cache), -1)
        st = self.stats
        st["n_tokens_max"] = max(st["n_tokens_max"], len(slot.cache))
        st["draft_tokens"] += len(draft)
        st["draft_accepted"] += n
        st["drafts"] += 1
        task.draft_n += len(draft)
        task.draft_accepted += n
        self.timed(task, False, len(ids))
        for token in ids:
            self.advance(slot, token)
            if task.done:
                break

    def timed(self, task, prompt, n=1):
        """Timings as llama-server keeps them: the prompt from its decode's start to the first token
        sampled, generation from there to the last token sampled (wall time: the decodes, sampling,
        the HTTP tasks between them, all of it), over one step fewer than tokens sampled."""
        now = time.ticks_us()
        ms = time.ticks_diff(now, task.t_last) / 1000
        task.t_last = now
        task.n_sampled += n
        if prompt:
            task.prompt_ms += ms
            self.stats["prompt_ms"] += ms
        else:
            task.predicted_ms += ms
            self.stats["predicted_ms"] += ms

    def shift(self, slot):
        """llama-server's context shift, for a slot whose sequence fills it: the first n_keep tokens
        (the BOS besides) stay, the n_discard after them (half of the rest by default) go, and the
        keys behind move down, re-rotated by llama.cpp at the next decode."""
        task, model = slot.task, self.model
        n_keep = len(task.prompt) if task.n_keep < 0 else task.n_keep
        if self.meta["add_bos"]:
            n_keep += 1
        n_keep = min(self.n_ctx_slot - 4, n_keep)
        n_left = len(slot.cache) - n_keep
        n_discard = max(0, min(task.n_discard or n_left // 2, n_left - 1))
        model.kv_remove(slot.id, n_keep, n_keep + n_discard)
        model.kv_shift(slot.id, n_keep + n_discard, len(slot.cache), -n_discard)
        del slot.cache[n_keep:n_keep + n_discard]
        task.truncated = True

    def advance(self, slot, token):
        task = slot.task
        model = self.model
        if model.is_eog(token):
            task.finish("eos")
        else:
            task.tokens.append(token)
            slot.pending = [token]
            self.stats["predicted_tokens"] += 1
            piece = model.token_to_piece(token, token in task.preserved)
            if task.add_piece(piece):
                task.finish("word")
            elif b"\n" in piece and 0 < task.t_max_predict_ms < task.predicted_ms:
                task.finish("limit")            # as llama-server: past the time, at a newline
            elif len(task.tokens) == task.n_predict:
                task.finish("limit")
            elif len(slot.cache) + 1 >= self.n_ctx_slot:
                if self.settings.context_shift:
                    self.shift(slot)
                else:
                    task.finish("limit")
        if task.done:
            if task.stop_type == "word" and task.probs:     # as llama-server: not the stop word's tokens
                n = len(model.tokenize(task.stopping_word, False, False))
                del task.probs[max(0, len(task.probs) - n):]
            self._release(slot)
