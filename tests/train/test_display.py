import io

from rich.console import Console

from vitkit.train.display import TrainDisplay


def test_terminal_gets_a_progress_bar_with_eta():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160)
    with TrainDisplay(10, console, log_every=5) as display:
        assert display.interactive
        display.step(5, epoch=1, loss=0.5, lr=1e-3, images_per_s=123.0)
    text = out.getvalue()
    assert "epoch 1" in text and "loss 0.5000" in text and "123 img/s" in text and "ETA" in text and "5/10" in text


def test_pipe_gets_plain_lines_every_log_every_steps():
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=160)
    with TrainDisplay(10, console, log_every=5) as display:
        assert not display.interactive
        for step in range(1, 11):
            display.step(step, epoch=0, loss=1.0, lr=1e-3, images_per_s=50.0)
    lines = out.getvalue().splitlines()
    assert lines == [
        "epoch 0 step 5/10 loss 1.0000 lr 1.00e-03 50 img/s",
        "epoch 0 step 10/10 loss 1.0000 lr 1.00e-03 50 img/s",
    ]
