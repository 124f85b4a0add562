"""The demo page (Gradio): a video, a moment, a question; the answer streamed onto the page, the chat on the
same memory, and the memory drawn. All the work is :class:`~moviechat.demo.session.DemoSession`'s; a problem
is a line in the status box, and the server goes on serving."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Optional

from moviechat.demo.picture import memory_figure
from moviechat.demo.session import MODES, DemoError, DemoSession
from moviechat.text.prompt import MAX_NEW_TOKENS

PLAYER_TIME_JS = "() => { const v = document.querySelector('#player video'); return v ? v.currentTime : 0; }"


def _provenance_markdown(session: DemoSession) -> str:
    return "**Model** · " + " · ".join(f"{k}: `{v}`" for k, v in session.provenance().items())


def _stats_markdown(stats: dict) -> str:
    return " · ".join(f"{k}: **{v}**" for k, v in stats.items())


def build_page(session: DemoSession):
    """The Gradio Blocks of the demo (not launched)."""
    import gradio as gr

    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"])  # no web fonts fetched
    with gr.Blocks(title="MovieChat demo", analytics_enabled=False) as page:
        page.theme = theme
        video_key = gr.State(None)
        history = gr.State([])
        gr.Markdown("## MovieChat: ask a trained model about a long video")
        gr.Markdown(_provenance_markdown(session), elem_id="provenance")
        with gr.Row():
            with gr.Column(scale=3):
                upload = gr.File(label="Upload a video (or a features .npy)", elem_id="upload", file_count="single")
                choice = gr.Dropdown(session.choices(), value=None, label="or choose one of --videos", elem_id="choice",
                                     interactive=bool(session.choices()))
                player = gr.Video(label="Player", elem_id="player", interactive=False)
                status = gr.Markdown("Open a video to start.", elem_id="status")
            with gr.Column(scale=2):
                mode = gr.Radio(list(MODES), value="global", label="Mode", elem_id="mode")
                seconds = gr.Slider(0.0, 1.0, value=0.0, step=0.1, label="Breakpoint time (s)", elem_id="time")
                use_player = gr.Button("Use the player's current time", elem_id="use-player", size="sm")
                generation = gr.Radio(["greedy", "moviechat"], value="greedy", elem_id="generation",
                                      label="Generation (moviechat: the paper's sampling)")
                max_new = gr.Slider(1, 512, value=MAX_NEW_TOKENS, step=1, label="Max new tokens", elem_id="max-new")
        chat = gr.Chatbot(label="Chat on the memory", elem_id="chat", height=260)
        with gr.Row():
            question = gr.Textbox(label="Question", elem_id="question", scale=4)
            ask = gr.Button("Ask", variant="primary", elem_id="ask", scale=1)
            clear = gr.Button("New chat", elem_id="new-chat", scale=1)
        answer = gr.Textbox(label="Answer", elem_id="answer", interactive=False)
        stats = gr.Markdown("", elem_id="stats")
        memory = gr.Plot(label="What the memory holds at that moment", elem_id="memory")

        def open_file(path: Optional[str], progress=gr.Progress()) -> tuple:
            if not path:
                return gr.update(), gr.update(), gr.update(), gr.update(), gr.update(), None
            return *_open(session, Path(path), progress), None  # the upload box empties, ready for the next file

        def open_choice(name: Optional[str], progress=gr.Progress()) -> tuple:
            if not name:
                return gr.update(), gr.update(), gr.update(), gr.update(), gr.update()
            try:
                path = session.chosen(name)
            except DemoError as e:
                return gr.update(), f"**Error:** {e}", gr.update(), gr.update(), gr.update()
            return _open(session, path, progress)

        opened = [video_key, status, seconds, player, history]
        upload.upload(open_file, upload, opened + [upload])
        choice.change(open_choice, choice, opened)
        use_player.click(None, None, seconds, js=PLAYER_TIME_JS)
        mode.change(lambda: [], None, history)  # another memory: a new chat
        clear.click(lambda: ([], [], ""), None, [history, chat, answer])
        ask_inputs = [video_key, question, mode, seconds, history, generation, max_new]
        ask_outputs = [chat, answer, stats, memory, status, history]

        def asked(*args) -> Iterator[tuple]:
            yield from _ask(session, *args)

        ask.click(asked, ask_inputs, ask_outputs)
        question.submit(asked, ask_inputs, ask_outputs)
    return page


def _open(session: DemoSession, path: Path, progress) -> tuple:
    import gradio as gr

    encoded = session.encoded
    try:
        video = session.open(path, lambda f, s: progress(f, desc=s))
    except DemoError as e:
        return gr.update(), f"**Error:** {e}", gr.update(), gr.update(), gr.update()
    how = "encoded now" if session.encoded > encoded else "from the cache"
    playable = None if path.suffix.lower() == ".npy" else str(path)
    note = (f"Opened **{video.name}**: {len(video.stamps)} frames over {video.duration:.1f}s ({how}). "
            f"Breakpoint times run from 0 to {video.duration:.1f}s.")
    return video.key, note, gr.update(value=0.0, maximum=video.duration), playable, []


def _ask(session: DemoSession, key: Optional[str], question: str, mode: str, seconds: Optional[float],
         history: list, generation: str, max_new: float) -> Iterator[tuple]:
    import gradio as gr

    keep = gr.update()
    try:
        if key is None or key not in session.cache:
            raise DemoError("open a video first (upload one, or choose one)")
        video = session.cache[key]
        pairs = [tuple(p) for p in history]
        messages = _messages(pairs)
        for reply in session.ask(video, question, mode, seconds, pairs, generation, int(max_new)):
            shown = messages + [{"role": "user", "content": question}, {"role": "assistant", "content": reply.text}]
            if not reply.done:
                yield shown, reply.text, keep, keep, "Answering…", keep
                continue
            read = reply.read
            figure = memory_figure(session.plan(video, read), read, video.stamps, video.duration, video.name)
            where = "global memory" if read.frame is None else f"breakpoint at {video.stamps[read.frame]:.1f}s"
            yield (shown, reply.text, _stats_markdown(reply.stats), figure, f"Answered on the {where}.",
                   pairs + [(question.strip(), reply.text)])
    except DemoError as e:
        yield keep, keep, keep, keep, f"**Error:** {e}", keep


def _messages(pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    return [m for q, a in pairs for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
