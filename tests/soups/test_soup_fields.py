"""A Soup's typed fields are what soup.json records, in one fixed order, with info's keys after."""

from soup_exp.soups.recipe import Soup, soups_of


def test_typed_fields_come_in_field_order_then_info_keys_in_theirs():
    soup = Soup(None, {"placement": "cpu", "z": 1}, held_out_accuracy=0.5, beta=1.2, coefficients=[0.4, 0.6])
    assert list(soup.recorded()) == ["coefficients", "beta", "held_out_accuracy", "placement", "z"]


def test_a_user_recipe_passing_fields_in_info_keeps_its_keys_and_order():
    soup = Soup(None, {"held_out_accuracy": 0.7, "ingredients": ["a"], "mine": True})
    assert list(soup.recorded()) == ["held_out_accuracy", "ingredients", "mine"]
    assert soup.recorded()["held_out_accuracy"] == 0.7


def test_normalising_a_recipe_result_keeps_its_typed_fields():
    (soup,) = soups_of("ens", Soup(None, kind="ensemble", members=["a", "b"]))
    assert (soup.name, soup.kind, soup.members) == ("ens", "ensemble", ["a", "b"])
