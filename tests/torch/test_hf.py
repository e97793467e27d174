"""test_hf.py - FusedAdamW under Hugging Face's training loops, on CPU: transformers.Trainer (the
optimizer handed in as optimizers=(optimizer, scheduler) and as optimizer_cls_and_kwargs, a checkpoint
saved mid-run and resumed, either optimizer's checkpoint into the other) and accelerate.Accelerator
(prepare, gradient accumulation, clip_grad_norm_), each against the same loop with torch.optim.AdamW.
The model is a tiny GPT-2 built from a config (no download), trained on synthetic tokens.
Every case skips, saying why, where transformers or accelerate cannot be imported (an interpreter
other than the one tests/torch/setup_venv.sh prepares)."""

import copy
import os
import tempfile

# No network, no telemetry, no hub cache writes outside the test's temporary directory.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from fusedadam.torch import FusedAdamW  # noqa: E402
from harness import Skip, check_close, check_equal, run  # noqa: E402

try:
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel, PrinterCallback, Trainer, TrainingArguments

    transformers.utils.logging.disable_progress_bar()  # "Writing model shards" at every checkpoint
except Exception as error:  # noqa: BLE001 - any import failure means: skip
    transformers = None
    transformers_error = f"{type(error).__name__}: {error}"
try:
    import accelerate
except Exception as error:  # noqa: BLE001
    accelerate = None
    accelerate_error = f"{type(error).__name__}: {error}"

# Tensors this small gain nothing from threads, and on a loaded machine threads waiting on each other
# make the runs ten times slower.
torch.set_num_threads(1)

VOCAB, LENGTH, SEQUENCES = 32, 16, 64
STEPS, BATCH, SAVE_AT = 30, 8, 15
HPARAMS = {"lr": 3e-3, "betas": (0.9, 0.95), "eps": 1e-8}
WEIGHT_DECAY = 0.1
# torch.optim.AdamW and FusedAdamW differ per step by float rounding (NUMERICS.md: atol 1e-5, rtol
# 1e-6); over the runs' steps a transformer's training amplifies such differences, so whole runs are
# compared with this tolerance (measured over seeds: at most a fifth of it).
RUN_TOL = {"atol": 2e-4, "rtol": 1e-4}


def need_transformers():
    if transformers is None:
        raise Skip(f"transformers cannot be imported ({transformers_error}); tests/torch/setup_venv.sh installs it")
    need_accelerate()  # Trainer runs on accelerate


def need_accelerate():
    if accelerate is None:
        raise Skip(f"accelerate cannot be imported ({accelerate_error}); tests/torch/setup_venv.sh installs it")


def tiny_gpt2():
    """A 2-layer GPT-2 from a config, initialised from torch's generator (no dropout: runs compare)."""
    config = GPT2Config(
        vocab_size=VOCAB, n_positions=LENGTH, n_embd=32, n_layer=2, n_head=2,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(config)


def synthetic_tokens():
    """Sequences with a rule to learn: each token follows from the one before (a + 5) mod VOCAB,
    from random starts, with a tenth of the tokens replaced by noise."""
    start = torch.randint(0, VOCAB, (SEQUENCES, 1))
    tokens = (start + 5 * torch.arange(LENGTH)) % VOCAB
    noise = torch.rand(SEQUENCES, LENGTH) < 0.1
    return torch.where(noise, torch.randint(0, VOCAB, (SEQUENCES, LENGTH)), tokens)


class TokenDataset(torch.utils.data.Dataset):
    def __init__(self, tokens):
        self.tokens = tokens

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, index):
        return {"input_ids": self.tokens[index], "labels": self.tokens[index]}


def training_args(output_dir, seed, **overrides):
    args = dict(
        output_dir=output_dir, max_steps=STEPS, per_device_train_batch_size=BATCH,
        learning_rate=HPARAMS["lr"], adam_beta1=HPARAMS["betas"][0], adam_beta2=HPARAMS["betas"][1],
        adam_epsilon=HPARAMS["eps"], weight_decay=WEIGHT_DECAY, max_grad_norm=1.0,
        lr_scheduler_type="cosine", warmup_steps=5, logging_steps=1, save_strategy="no",
        report_to="none", use_cpu=True, seed=seed, data_seed=seed, dataloader_num_workers=0,
        disable_tqdm=True,
    )
    args.update(overrides)
    return TrainingArguments(**args)


def quiet(trainer):
    """Without the dict printed at every logged step (disable_tqdm swaps the progress bar for it)."""
    trainer.remove_callback(PrinterCallback)
    return trainer


def losses(trainer):
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def check_loss_decreases(what, values):
    if len(values) < 10:
        raise AssertionError(f"{what}: {len(values)} losses logged, expected {STEPS}")
    first, last = sum(values[:5]) / 5, sum(values[-5:]) / 5
    if not last < 0.8 * first:
        raise AssertionError(f"{what}: loss did not decrease enough: first 5 steps {first:.4f}, last 5 {last:.4f}")


def check_models_close(what, model, reference, tolerance):
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        check_close(f"{what}: {name}", p, q, **tolerance)


def inner_optimizer(trainer):
    """The optimizer the Trainer steps, under accelerate's AcceleratedOptimizer wrapper."""
    return getattr(trainer.optimizer, "optimizer", trainer.optimizer)


def trainer_optimizer_cls_and_kwargs():
    """Trainer builds the optimizer itself (decay and no-decay groups) from optimizer_cls_and_kwargs,
    against optim="adamw_torch" (torch.optim.AdamW through Trainer's own path)."""
    need_transformers()
    seed = int(torch.randint(0, 2**31 - 1, ()))
    model, dataset = tiny_gpt2(), TokenDataset(synthetic_tokens())
    reference_model = copy.deepcopy(model)
    with tempfile.TemporaryDirectory() as directory:
        trainer = quiet(Trainer(
            model=model, args=training_args(directory, seed), train_dataset=dataset,
            optimizer_cls_and_kwargs=(FusedAdamW, dict(HPARAMS)),
        ))
        trainer.train()
        reference = quiet(Trainer(
            model=reference_model, args=training_args(directory, seed, optim="adamw_torch"), train_dataset=dataset
        ))
        reference.train()
    optimizer = inner_optimizer(trainer)
    if type(optimizer) is not FusedAdamW:
        raise AssertionError(f"Trainer stepped {type(optimizer).__name__}, not FusedAdamW")
    if type(inner_optimizer(reference)) is not torch.optim.AdamW:
        raise AssertionError(f"reference Trainer stepped {type(inner_optimizer(reference)).__name__}")
    decays = sorted(group["weight_decay"] for group in optimizer.param_groups)
    if decays != [0.0, WEIGHT_DECAY]:
        raise AssertionError(f"param groups' weight_decay {decays}, expected Trainer's no-decay and decay groups")
    check_loss_decreases("FusedAdamW", losses(trainer))
    for step, (a, b) in enumerate(zip(losses(trainer), losses(reference))):
        if abs(a - b) > 1e-3 * abs(b) + 1e-4:
            raise AssertionError(f"step {step + 1}: loss {a:.6f}, torch AdamW {b:.6f}")
    check_models_close(f"after {STEPS} steps", model, reference_model, RUN_TOL)


def make_trainer(model, directory, seed, optimizer_class, dataset, **overrides):
    """Trainer with optimizers=(optimizer, scheduler) built by the caller, as a user brings their own."""
    optimizer = optimizer_class(model.parameters(), weight_decay=WEIGHT_DECAY, **HPARAMS)
    scheduler = transformers.get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=5, num_training_steps=STEPS)
    args = training_args(directory, seed, **overrides)
    return quiet(Trainer(model=model, args=args, train_dataset=dataset, optimizers=(optimizer, scheduler)))


def trainer_optimizers_tuple_save_and_resume():
    """optimizers=(FusedAdamW, scheduler) against (torch.optim.AdamW, scheduler); each run saves a
    checkpoint at step SAVE_AT and trains on to STEPS. A fresh model and optimizer resumed from the
    FusedAdamW checkpoint ends where the uninterrupted run ended; and either optimizer resumed from the
    other's checkpoint ends where the other's uninterrupted run did (the checkpoints interchange)."""
    need_transformers()
    seed = int(torch.randint(0, 2**31 - 1, ()))
    initial, dataset = tiny_gpt2(), TokenDataset(synthetic_tokens())
    save = {"save_strategy": "steps", "save_steps": SAVE_AT, "save_only_model": False}
    models = {}
    with tempfile.TemporaryDirectory() as directory:
        for name, optimizer_class in (("fused", FusedAdamW), ("torch", torch.optim.AdamW)):
            models[name] = copy.deepcopy(initial)
            output = os.path.join(directory, name)
            trainer = make_trainer(models[name], output, seed, optimizer_class, dataset, **save)
            trainer.train()
            if name == "fused":
                check_loss_decreases("FusedAdamW", losses(trainer))
        check_models_close(f"FusedAdamW against torch AdamW after {STEPS} steps", models["fused"], models["torch"], RUN_TOL)

        for saved_by, resumed_with, tolerance in (
            ("fused", FusedAdamW, None),  # the same computation: the same bits
            ("torch", FusedAdamW, RUN_TOL),
            ("fused", torch.optim.AdamW, RUN_TOL),
        ):
            model = tiny_gpt2()  # different initial weights: the checkpoint must replace them
            output = os.path.join(directory, f"resume-{saved_by}-{resumed_with.__name__}")
            trainer = make_trainer(model, output, seed, resumed_with, dataset)
            trainer.train(resume_from_checkpoint=os.path.join(directory, saved_by, f"checkpoint-{SAVE_AT}"))
            # The log history comes back with the checkpoint: the resumed run adds the steps after it.
            if trainer.state.global_step != STEPS or len(losses(trainer)) != STEPS:
                raise AssertionError(
                    f"resumed run ended at step {trainer.state.global_step} with {len(losses(trainer))} "
                    f"losses logged, expected {STEPS} with {STEPS}"
                )
            what = f"{saved_by} checkpoint at {SAVE_AT} resumed with {resumed_with.__name__}"
            if tolerance is None:
                for (name, p), q in zip(model.named_parameters(), models[saved_by].parameters()):
                    check_equal(f"{what}: {name}", p, q)
            else:
                check_models_close(what, model, models[saved_by], tolerance)


def accelerate_prepare_loop():
    """Accelerator().prepare(model, FusedAdamW, dataloader, scheduler) with gradient accumulation and
    accelerator.clip_grad_norm_, against the same loop with torch.optim.AdamW."""
    need_accelerate()
    from accelerate import Accelerator

    initial, tokens = tiny_gpt2(), synthetic_tokens()
    data_seed = int(torch.randint(0, 2**31 - 1, ()))
    results = {}
    for name, optimizer_class in (("fused", FusedAdamW), ("torch", torch.optim.AdamW)):
        accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
        model = copy.deepcopy(initial)
        optimizer = optimizer_class(model.parameters(), weight_decay=WEIGHT_DECAY, **HPARAMS)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 5))
        loader = torch.utils.data.DataLoader(
            TokenDataset(tokens), batch_size=BATCH // 2, shuffle=True,
            generator=torch.Generator().manual_seed(data_seed),
        )
        model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
        step_losses, steps_taken = [], 0
        for epoch in range(4):
            for batch in loader:
                with accelerator.accumulate(model):
                    loss = model(**batch).loss
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(model.parameters(), 1.0)
                        steps_taken += 1
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                step_losses.append(loss.item())
        results[name] = (accelerator.unwrap_model(model), step_losses, steps_taken)
    fused_model, fused_losses, fused_steps = results["fused"]
    torch_model, torch_losses, _ = results["torch"]
    if fused_steps != 4 * SEQUENCES // BATCH:
        raise AssertionError(f"{fused_steps} optimizer steps, expected {4 * SEQUENCES // BATCH}")
    check_loss_decreases("FusedAdamW under accelerate", fused_losses)
    for step, (a, b) in enumerate(zip(fused_losses, torch_losses)):
        if abs(a - b) > 1e-3 * abs(b) + 1e-4:
            raise AssertionError(f"micro-batch {step}: loss {a:.6f}, torch AdamW {b:.6f}")
    check_models_close(f"after {fused_steps} steps", fused_model, torch_model, RUN_TOL)


if __name__ == "__main__":
    versions = ", ".join(
        f"{module.__name__} {module.__version__}" for module in (transformers, accelerate) if module is not None
    )
    print(f"# test_hf.py: {versions or 'transformers and accelerate absent'}")
    run(
        [
            ("hf_trainer_optimizer_cls_and_kwargs", trainer_optimizer_cls_and_kwargs),
            ("hf_trainer_optimizers_tuple_save_and_resume", trainer_optimizers_tuple_save_and_resume),
            ("accelerate_prepare_loop", accelerate_prepare_loop),
        ]
    )
