"""The estimator's parameters (issue 20): nested get_params/set_params, scikit-learn's clone and GridSearchCV, and
model files of format version 1 (the flat parameters of before the settings objects)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import N_TRIALS, TEMPLATE_SIZE, small_model
from safetensors.torch import save_file

from spikedict import SpikeDictionary
from spikedict.settings import Encoder, TemplateConstraints
from spikedict.solvers import EM, Alternating, Backprop

CONSTRUCTOR = [
    "n_templates",
    "template_size",
    "family",
    "n_trials",
    "sparsity",
    "solver",
    "encoder",
    "stride",
    "baseline",
    "init",
    "constraints",
    "device",
    "seed",
    "progress",
    "checkpoint_path",
]
#: The constructor parameters that hold settings objects (reached with "name__key").
NESTED = ("solver", "encoder", "constraints")


def configured() -> SpikeDictionary:
    return SpikeDictionary(
        n_templates=2,
        template_size=TEMPLATE_SIZE,
        n_trials=N_TRIALS,
        solver=Alternating(n_epochs=5, reweighting=0.5),
        encoder=Encoder(n_iterations=50, algorithm="ista"),
        constraints=TemplateConstraints(smoothness=1e-3),
        progress=False,
        device="cpu",
    )


# ---------------------------------------------------------------------------------------- get/set_params
def test_get_params_lists_the_constructor_and_the_nested_settings():
    model = configured()
    assert list(model.get_params(deep=False)) == CONSTRUCTOR
    params = model.get_params()  # deep by default
    assert params["solver"] is model.solver and params["encoder"] is model.encoder
    assert params["solver__n_epochs"] == 5 and params["solver__reweighting"] == 0.5
    assert params["encoder__n_iterations"] == 50 and params["encoder__algorithm"] == "ista"
    assert params["constraints__smoothness"] == 1e-3 and params["constraints__zero_edges"] == 0
    settings = {"solver": Alternating(), "encoder": Encoder(), "constraints": TemplateConstraints()}
    expected = {f"{name}__{key}" for name, default in settings.items() for key in default.get_params()}
    assert {key for key in params if "__" in key} == expected
    # shorthands are reported as the settings they stand for, and left as they are
    default = SpikeDictionary()  # binomial counts: "auto" is EM
    assert default.get_params()["solver__n_epochs"] == EM().n_epochs
    assert default.get_params()["solver__map_fit__n_epochs"] == Alternating().n_epochs
    assert SpikeDictionary(family="gaussian").get_params()["solver__n_epochs"] == Alternating().n_epochs
    assert default.get_params()["encoder__n_iterations"] == Encoder().n_iterations
    assert default.solver == "auto" and default.encoder is None and default.constraints is None
    untied = SpikeDictionary(encoder=Encoder(tied=False))
    assert untied.get_params()["solver__backprop"] == Backprop().backprop


def test_set_params_reaches_the_nested_settings_and_round_trips():
    model = configured()
    assert model.set_params(n_templates=4, solver__n_epochs=7, encoder__tied=True, constraints__zero_edges=2) is model
    assert model.n_templates == 4 and model.solver == Alternating(n_epochs=7, reweighting=0.5)
    assert model.encoder == Encoder(n_iterations=50, algorithm="ista") and model.constraints.zero_edges == 2
    # all nested values onto a default estimator of the same solver: the same parameters, in settings objects of
    # its own (the solver named: "auto" would be EM for counts, whose settings are not the alternating solver's)
    nested = {key: value for key, value in model.get_params().items() if "__" in key}
    unnested = {k: v for k, v in model.get_params(deep=False).items() if k not in NESTED}
    other = SpikeDictionary(**unnested, solver="alternating")
    assert other.set_params(**nested).get_params() == model.get_params()  # settings objects compare by value
    assert other.solver == model.solver and other.solver is not model.solver
    assert other.encoder == model.encoder and other.constraints == model.constraints
    # a string solver is resolved to its object by set_params: "auto" by the family and the encoder (counts: EM,
    # Gaussian data: alternating, untied: backprop)
    assert SpikeDictionary().set_params(solver__n_epochs=2).solver == EM(n_epochs=2)
    assert SpikeDictionary(family="gaussian").set_params(solver__n_epochs=2).solver == Alternating(n_epochs=2)
    assert SpikeDictionary(solver="backprop").set_params(solver__learning_rate=5e-3).solver == Backprop(
        learning_rate=5e-3
    )
    untied = SpikeDictionary(encoder=Encoder(tied=False)).set_params(solver__n_epochs=2)
    assert untied.solver == Backprop(n_epochs=2)
    # a whole settings object replaces the old one
    assert model.set_params(solver=Backprop(batch_size=4)).get_params()["solver__batch_size"] == 4


@pytest.mark.parametrize(
    ("key", "owner", "names"),
    [
        ("n_epochs", "SpikeDictionary", CONSTRUCTOR),
        ("n_inference_iterations", "SpikeDictionary", CONSTRUCTOR),
        ("solver__n_inference_iterations", "EM", list(EM().get_params(deep=False))),
        ("solver__batch_size", "EM", list(EM().get_params(deep=False))),
        ("encoder__nonnegative_templates", "Encoder", list(Encoder().get_params())),
        ("constraints__tied", "TemplateConstraints", list(TemplateConstraints().get_params())),
    ],
)
def test_unknown_parameters_are_refused_with_the_valid_ones(key, owner, names):
    name = key.rpartition("__")[2]
    with pytest.raises(ValueError, match=f"'{name}' is not a parameter of {owner}; its parameters are ") as error:
        SpikeDictionary().set_params(**{key: 1})
    assert str(error.value).endswith(", ".join(names) + ".")


def test_nested_keys_need_a_settings_object():
    with pytest.raises(ValueError, match="seed of SpikeDictionary is 0, which has no parameters to set"):
        SpikeDictionary().set_params(seed__value=1)
    with pytest.raises(ValueError, match="solver must be 'auto', 'alternating', 'backprop', 'em' or a Solver object"):
        SpikeDictionary(solver="adam").set_params(solver__n_epochs=1)


# ------------------------------------------------------------------------------------------------ clone
def test_clone_is_an_unfitted_copy_with_its_own_settings_objects(binomial_counts):
    from sklearn.base import clone

    fitted = configured().fit(binomial_counts)
    copy = clone(fitted)
    assert type(copy) is SpikeDictionary and not hasattr(copy, "model_") and not hasattr(copy, "templates_")
    assert copy.get_params() == fitted.get_params()
    for name in NESTED:
        assert getattr(copy, name) == getattr(fitted, name) and getattr(copy, name) is not getattr(fitted, name)
    copy.set_params(solver__n_epochs=9, encoder__n_iterations=10)
    assert fitted.solver.n_epochs == 5 and fitted.encoder.n_iterations == 50  # the original keeps its settings
    # the copy fits like the original
    again = clone(fitted).fit(binomial_counts)
    np.testing.assert_array_equal(again.templates_, fitted.templates_)
    # shorthands stay shorthands; arrays are copied
    init = np.ones((3, 1, TEMPLATE_SIZE))
    plain = clone(SpikeDictionary(solver="auto", init=init))
    assert plain.solver == "auto" and plain.encoder is None and plain.constraints is None
    assert np.array_equal(plain.init, init) and plain.init is not init


# ----------------------------------------------------------------------------------------- GridSearchCV
def test_grid_search_over_a_nested_solver_setting_picks_by_score(binomial_counts):
    from sklearn.base import clone
    from sklearn.model_selection import GridSearchCV, KFold

    base = SpikeDictionary(
        n_templates=3,
        template_size=TEMPLATE_SIZE,
        n_trials=N_TRIALS,
        encoder=Encoder(n_iterations=30),
        progress=False,
        device="cpu",
        seed=0,
    )
    search = GridSearchCV(base, {"solver__n_epochs": [1, 2]}, cv=2).fit(binomial_counts)
    scores = search.cv_results_["mean_test_score"]
    assert np.all(np.isfinite(scores)) and len(scores) == 2
    assert search.best_index_ == int(np.argmax(scores))  # chosen by score: the mean log-likelihood per bin
    assert search.best_params_ == {"solver__n_epochs": [1, 2][search.best_index_]}
    assert search.best_score_ == pytest.approx(scores.max())
    # a fold's score is the estimator's score on the held-out half, fitted on the other half
    train, test = next(KFold(2).split(binomial_counts))
    one_epoch = clone(base).set_params(solver__n_epochs=1).fit(binomial_counts[train])
    assert search.cv_results_["split0_test_score"][0] == pytest.approx(one_epoch.score(binomial_counts[test]))
    # refitted on all the data with the best setting; the searched estimator is left as it was
    best = search.best_estimator_
    assert best.solver.n_epochs == search.best_params_["solver__n_epochs"] and len(best.history_) >= 1
    assert best.templates_.shape == (3, 1, TEMPLATE_SIZE)
    assert base.solver == "auto" and not hasattr(base, "model_")


# ------------------------------------------------------------------------------------- format version 1
def version_1_params(**changed) -> dict:
    """The parameters of a model file of format version 1: the 37 flat keywords of SpikeDictionary then."""
    params = dict(
        n_templates=3,
        template_size=TEMPLATE_SIZE,
        family="binomial",
        n_trials=N_TRIALS,
        sparsity="auto",
        n_iterations=50,
        n_inference_iterations=300,
        algorithm="fista",
        nonnegative_codes=True,
        tied=True,
        stride=1,
        baseline="learn",
        init="data",
        nonnegative_templates=False,
        zero_edges=0,
        smoothness=0.0,
        solver="auto",
        reweighting=0.3,
        n_restarts=1,
        continuation=5.0,
        n_spare_templates="auto",
        padding="auto",
        initial_subset="auto",
        epoch_subset=1.0,
        tolerance=1e-6,
        n_epochs=30,
        batch_size=10,
        learning_rate=0.01,
        backprop="none",
        n_dictionary_steps="auto",
        warm_start=True,
        validation_fraction=0.0,
        patience=None,
        device="cpu",
        seed=0,
        progress=False,
        checkpoint_path=None,
    )
    assert set(changed) <= set(params)
    return params | changed


def write_version_1(model: SpikeDictionary, params: dict, path) -> None:
    """``model`` written as SpikeDictionary.save wrote it in format version 1 (metadata without a solver)."""
    metadata = {
        "format": "spikedict-model",
        "version": "1",
        "params": json.dumps(params),
        "family": json.dumps(model.family_.config()),
        "fitted": json.dumps(
            {
                "sparsity_": model.sparsity_,
                "n_channels_": model.n_channels_,
                "stop_reason_": model.stop_reason_,
                "reweighting_delta_": model.reweighting_delta_,
                "restart_losses_": model.restart_losses_,
                "best_restart_": model.best_restart_,
            }
        ),
        "history": model.history_.to_json(orient="split", double_precision=15),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.model_.state_dict().items()}
    tensors["initial_templates"] = torch.as_tensor(model.initial_templates_)
    save_file(tensors, str(path), metadata=metadata)


@pytest.mark.parametrize("variant", ["alternating", "untied-backprop"])
def test_a_model_file_of_format_version_1_loads(variant, binomial_counts, held_out_counts, tmp_path):
    if variant == "alternating":
        fitted = small_model(
            solver=Alternating(n_epochs=2, n_code_iterations=40, n_dictionary_iterations=20, reweighting=0.5),
            encoder=Encoder(n_iterations=100),
            constraints=TemplateConstraints(smoothness=1e-3),
        ).fit(binomial_counts)
        old = version_1_params(
            n_epochs=2, n_iterations=40, n_dictionary_steps=20, reweighting=0.5, n_inference_iterations=100
        )
        old |= {"smoothness": 1e-3}
    else:
        fitted = small_model(
            encoder=Encoder(n_iterations=100, tied=False),
            constraints=TemplateConstraints(),  # a version-1 file has the constraints' values, defaults here
            solver=Backprop(n_epochs=1, backprop="truncated", learning_rate=5e-3, batch_size=4),
        ).fit(binomial_counts)
        # the old "auto" solver: back-propagation for an untied encoder
        old = version_1_params(
            tied=False, backprop="truncated", n_epochs=1, learning_rate=5e-3, batch_size=4, n_inference_iterations=100
        )
    path = tmp_path / "version1.safetensors"
    write_version_1(fitted, old, path)
    loaded = SpikeDictionary.load(path)
    # the flat parameters land in the settings objects they moved to
    assert loaded.get_params() == fitted.get_params()
    assert loaded.solver == fitted.solver, (loaded.solver, fitted.solver)
    assert loaded.encoder == fitted.encoder and loaded.constraints == fitted.constraints
    assert loaded.solver_ == fitted.solver_
    # and the fitted model is the one written
    np.testing.assert_array_equal(loaded.templates_, fitted.templates_)
    np.testing.assert_array_equal(loaded.baseline_, fitted.baseline_)
    np.testing.assert_array_equal(loaded.initial_templates_, fitted.initial_templates_)
    assert loaded.sparsity_ == fitted.sparsity_ and loaded.family_ == fitted.family_
    assert loaded.history_["epoch"].tolist() == fitted.history_["epoch"].tolist()
    np.testing.assert_allclose(loaded.transform(held_out_counts), fitted.transform(held_out_counts), rtol=1e-6)
    assert loaded.score(held_out_counts) == pytest.approx(fitted.score(held_out_counts), rel=1e-6)
    # saved again, it is written in the current format and reads back the same
    again = SpikeDictionary.load(loaded.save(tmp_path / "version2"))
    assert again.get_params() == loaded.get_params()
    np.testing.assert_array_equal(again.templates_, fitted.templates_)


@pytest.fixture(scope="module")
def held_out_counts(true_templates) -> np.ndarray:
    from spikedict.simulate import simulate_counts

    return simulate_counts(true_templates, n_examples=4, n_bins=300, n_trials=N_TRIALS, event_rate=0.02, seed=5).counts
