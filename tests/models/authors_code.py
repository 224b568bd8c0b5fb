"""The model-soups authors' code (mlfoundations/model-soups, main branch), transcribed for tests.

``ModelWrapper`` and ``get_model_from_sd`` are their ``utils.py`` (minus ``.cuda()`` and
``DataParallel``); ``uniform_soup`` and ``greedy_soup`` are the loops of their ``main.py``
("Step 3" and "Step 4") as written, with their ``test_model_on_dataset`` passed in as
``held_out_accuracy(model)`` and their results file read without pandas (rows in file order).
"""

from __future__ import annotations

import json
import math
import operator
import os

import torch


class ModelWrapper(torch.nn.Module):
    def __init__(self, model, feature_dim, num_classes, normalize=False, initial_weights=None):
        super(ModelWrapper, self).__init__()  # noqa: UP008 (their code)
        self.model = model
        self.classification_head = torch.nn.Linear(feature_dim, num_classes)
        self.normalize = normalize
        if initial_weights is None:
            initial_weights = torch.zeros_like(self.classification_head.weight)
            torch.nn.init.kaiming_uniform_(initial_weights, a=math.sqrt(5))
        self.classification_head.weight = torch.nn.Parameter(initial_weights.clone())
        self.classification_head.bias = torch.nn.Parameter(
            torch.zeros_like(self.classification_head.bias))

        # Note: modified. Get rid of the language part.
        if hasattr(self.model, 'transformer'):
            delattr(self.model, 'transformer')

    def forward(self, images, return_features=False):
        features = self.model.encode_image(images)
        if self.normalize:
            features = features / features.norm(dim=-1, keepdim=True)
        logits = self.classification_head(features)
        if return_features:
            return logits, features
        return logits


def get_model_from_sd(state_dict, base_model):
    feature_dim = state_dict['classification_head.weight'].shape[1]
    num_classes = state_dict['classification_head.weight'].shape[0]
    model = ModelWrapper(base_model, feature_dim, num_classes, normalize=True)
    for p in model.parameters():
        p.data = p.data.float()
    model.load_state_dict(state_dict)
    return model


def uniform_soup(model_paths):
    """main.py, Step 3."""
    NUM_MODELS = len(model_paths)  # noqa: N806
    for j, model_path in enumerate(model_paths):
        assert os.path.exists(model_path)
        state_dict = torch.load(model_path)
        if j == 0:
            uniform_soup = {k : v * (1./NUM_MODELS) for k, v in state_dict.items()}
        else:
            uniform_soup = {k : v * (1./NUM_MODELS) + uniform_soup[k] for k, v in state_dict.items()}
    return uniform_soup


def greedy_soup(results_file, model_location, base_model, held_out_accuracy):
    """main.py, Step 4: returns (greedy_soup_ingredients, greedy_soup_params)."""
    with open(results_file) as f:  # their pd.read_json(..., lines=True), rows in file order
        rows = [json.loads(line) for line in f if line.strip()]
    NUM_MODELS = len(rows)  # noqa: N806
    individual_model_val_accs = {}
    for row in rows:
        individual_model_val_accs[row['model_name']] = row['ImageNet2p']
    individual_model_val_accs = sorted(individual_model_val_accs.items(), key=operator.itemgetter(1))
    individual_model_val_accs.reverse()
    sorted_models = [x[0] for x in individual_model_val_accs]

    greedy_soup_ingredients = [sorted_models[0]]
    greedy_soup_params = torch.load(os.path.join(model_location, f'{sorted_models[0]}.pt'))
    best_val_acc_so_far = individual_model_val_accs[0][1]

    for i in range(1, NUM_MODELS):
        new_ingredient_params = torch.load(os.path.join(model_location, f'{sorted_models[i]}.pt'))
        num_ingredients = len(greedy_soup_ingredients)
        potential_greedy_soup_params = {
            k : greedy_soup_params[k].clone() * (num_ingredients / (num_ingredients + 1.)) +
                new_ingredient_params[k].clone() * (1. / (num_ingredients + 1))
            for k in new_ingredient_params
        }
        model = get_model_from_sd(potential_greedy_soup_params, base_model)
        held_out_val_accuracy = held_out_accuracy(model)
        if held_out_val_accuracy > best_val_acc_so_far:
            greedy_soup_ingredients.append(sorted_models[i])
            best_val_acc_so_far = held_out_val_accuracy
            greedy_soup_params = potential_greedy_soup_params
    return greedy_soup_ingredients, greedy_soup_params
