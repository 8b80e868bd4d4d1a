"""The MetaLR handler: an ordinary trainer handler on BACKWARD_COMPLETED, sharing its step with the benchmark."""

import ast
import importlib.util

import pytest
import torch
from conftest import REPO
from ignite.engine import Events
from monai.engines import SupervisedTrainer

import medtransfer.metalr
from medtransfer.handlers import MetaLRHandler
from medtransfer.layers import layer_groups, param_groups
from medtransfer.metalr import CyclingBatches, MetaLR

# the modules that must reach MONAI and ignite through public API only
PUBLIC_ONLY = ["checkpoints.py", "metalr.py", "reports.py"]


def _metalr_trainer(**trainer_kwargs):
    """A SupervisedTrainer running its own iteration (``iteration_update=None``) with MetaLR attached as a handler."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    groups = layer_groups(model)
    optimizer = torch.optim.SGD(param_groups(groups, 0.01))
    metalr = MetaLR(optimizer, groups, base_lr=0.01, pin_epochs=0, hyper_lr=1.0)
    val = [{"image": torch.randn(4), "label": torch.tensor(i % 3)} for i in range(6)]
    train = [{"image": torch.randn(5, 4), "label": torch.randint(0, 3, (5,))} for _ in range(3)]
    handler = MetaLRHandler(metalr, CyclingBatches(val, 3))
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=train, network=model, optimizer=optimizer,
        loss_function=torch.nn.CrossEntropyLoss(), iteration_update=None, train_handlers=[handler],
        decollate=False, **trainer_kwargs,
    )  # fmt: skip
    return trainer, handler


def test_metalr_handler_reuses_training_gradients_and_steps_with_new_lrs():
    """In a real SupervisedTrainer running its own iteration (no ``iteration_update``, so no private engine method):
    one training + one validation forward per iteration, and the optimizer's real step uses the LRs MetaLR just set
    (θ' = θ − α_new·g for plain SGD)."""
    trainer, handler = _metalr_trainer()
    model, optimizer, metalr = trainer.network, trainer.optimizer, handler.metalr
    groups = metalr.groups
    forwards = []
    model.register_forward_hook(lambda m, i, o: forwards.append(1))
    before, checked = {}, []

    @trainer.on(Events.ITERATION_STARTED)
    def keep(engine):
        before.update({n: p.detach().clone() for n, p in model.named_parameters()})

    @trainer.on(Events.ITERATION_COMPLETED)
    def check(engine):
        lr_of = {n: optimizer.param_groups[j]["lr"] for j, g in enumerate(groups) for n in g.param_names}
        for name, p in model.named_parameters():
            assert torch.allclose(p.detach(), before[name] - lr_of[name] * p.grad, atol=1e-7), name
        checked.append(lr_of)

    trainer.run()
    assert len(forwards) == 2 * 3  # train + validation forward per iteration, no second training pass
    assert len(checked) == 3 and metalr.updates == 3
    first_layer_lrs = [lrs["0.weight"] for lrs in checked]
    assert first_layer_lrs[-1] != pytest.approx(0.001, rel=1e-6)  # moved away from 0.1 x base, so the check above bites


@pytest.mark.parametrize("module", PUBLIC_ONLY)
def test_handlers_use_no_private_names_of_other_objects(module):
    """No private method of the trainer, no private attribute of a MONAI saver, no ``from x import _y``: only
    ``self`` has private attributes, so a MONAI or ignite release cannot break the handlers by renaming internals."""
    tree = ast.parse((REPO / "medtransfer" / "handlers" / module).read_text())
    private = [
        f"line {node.lineno}: {ast.unparse(node)}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and not (isinstance(node.value, ast.Name) and node.value.id == "self")
    ]
    private += [
        f"line {node.lineno}: from {node.module} import {alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
        if alias.name.startswith("_")
    ]
    assert private == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CPU-only check: with CUDA the scaler wants CUDA tensors")
@pytest.mark.filterwarnings("ignore")  # without CUDA, MONAI's GradScaler and autocast switch themselves off
def test_metalr_handler_amp_branch_runs_without_cuda():
    """``amp=True`` takes the branch that unscales, checks finiteness once and autocasts the validation forward;
    without CUDA those are no-ops, so the LRs equal a plain run's."""
    (plain, plain_handler), (amp, amp_handler) = _metalr_trainer(), _metalr_trainer(amp=True)
    plain.run()
    amp.run()
    assert amp_handler.metalr.updates == 3
    assert torch.allclose(amp_handler.metalr.lrs, plain_handler.metalr.lrs)


def test_metalr_handler_refuses_gradient_accumulation():
    trainer, handler = _metalr_trainer(accumulation_steps=2)
    with pytest.raises(ValueError, match="accumulation_steps"):
        trainer.run()
    assert handler.metalr.iterations == 0


def test_metalr_handler_state_resumes_lrs_and_validation_batches():
    trainer, handler = _metalr_trainer()
    trainer.run()
    state = handler.state_dict()
    _, resumed = _metalr_trainer()
    resumed.load_state_dict(state)
    assert torch.equal(resumed.metalr.lrs, handler.metalr.lrs) and resumed.metalr.iterations == 3
    assert resumed.meta_batches.drawn == handler.meta_batches.drawn == 3


def test_benchmark_and_handler_call_the_same_metalr_step(monkeypatch):
    """What benchmarks/metalr_step.py times is what training runs: both go through medtransfer.metalr.metalr_step."""
    calls = []
    real = medtransfer.metalr.metalr_step

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(medtransfer.metalr, "metalr_step", counting)
    trainer, handler = _metalr_trainer()
    trainer.run()
    assert len(calls) == handler.metalr.updates == 3

    spec = importlib.util.spec_from_file_location("metalr_step_benchmark", REPO / "benchmarks" / "metalr_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = bench.parse_args(["--batch-size", "2", "--image-size", "32", "--device", "cpu"])
    step = bench.make_step(*bench.build(args, "metalr", torch.device("cpu")))
    assert step() and step()  # both iterations are meta iterations
    assert len(calls) == 3 + 2
