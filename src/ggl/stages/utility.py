"""Stage utility: federated averaging of the model on the private split under one defence,
test accuracy per round; resumes from its scratch file. Its final model is also the attacked
model of clients at checkpoint trained."""

from __future__ import annotations

from dataclasses import asdict
from logging import Logger

from ggl import io
from ggl.config import dp_sgd_step
from ggl.data import load_part
from ggl.dp import ACCOUNTANT, NORM_NOTE
from ggl.federated import Client, partition, sample_rate, train_federated
from ggl.models import build_model
from ggl.pipeline.registry import Stage
from ggl.runtime import resolve_device


def run(stage: Stage, log: Logger) -> None:
    params = stage.params
    cfg = params.utility
    defence = stage.keys["defence"]
    steps = params.defences[defence]
    device = resolve_device(params.device)
    images, labels = load_part(stage.input("private"))
    test_images, test_labels = load_part(stage.input("test"))
    clients = [Client(images[i].to(device), labels[i].to(device))
               for i in partition(labels, cfg)]
    test = Client(test_images.to(device), test_labels.to(device))
    settings = {"utility": asdict(cfg), "model": asdict(params.model),
                "steps": [{"kind": s.kind, **s.settings} for s in steps]}
    resume = stage.scratch("utility_resume")
    trained = train_federated(build_model(params.model, device), clients, steps, cfg, test,
                              resume, settings, log)
    io.write_text(stage.output("utility_rounds"), io.csv_text(
        ["round", "test_accuracy", "test_loss", "epsilon"],
        [[r["round"], f"{r['test_accuracy']:.6f}", f"{r['test_loss']:.6f}",
          "" if r["epsilon"] is None else f"{r['epsilon']:.6f}"]
         for r in trained.rows]))
    io.save_torch(stage.output("utility_model"), trained.model.state_dict())
    if stage.has("attacked_model"):
        io.save_torch(stage.output("attacked_model"), trained.model.state_dict())
    final = trained.rows[-1]
    dp = dp_sgd_step(steps)
    io.write_json(stage.output("utility_summary"), {
        "defence": defence, "steps": settings["steps"], **settings["utility"],
        "client_sizes": trained.client_sizes, "test_images": len(test_images),
        "model": settings["model"],
        "model_note": (NORM_NOTE if params.model.norm == "group" else "as published (BatchNorm)"),
        "test_accuracy": final["test_accuracy"], "test_loss": final["test_loss"],
        "initial_test_accuracy": trained.rows[0]["test_accuracy"],
        "chance_accuracy": float(test_labels.bincount().max()) / len(test_labels),
        "dp": None if dp is None else {
            **dp.settings, "epsilon": final["epsilon"], "accountant": ACCOUNTANT,
            "sample_rates": [sample_rate(cfg, n) for n in trained.client_sizes],
            "steps": cfg.rounds * cfg.local_steps,
            "scope": "each client's data, over all rounds; the largest epsilon over clients"},
    })
    resume.unlink(missing_ok=True)  # only now: the outputs are safe
    log.info("defence %s: test accuracy %.4f after %d rounds%s", defence,
             final["test_accuracy"], cfg.rounds,
             "" if dp is None else f", epsilon {final['epsilon']:.3g} at delta "
                                   f"{dp.settings['delta']:g}")
