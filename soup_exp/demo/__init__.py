"""The demo, an application of soup-exp: a miniature ImageNet family and a tiny CLIP.

It plugs in the way a user's code does, through the config alone: conf/data/synthetic.yaml
names :func:`soup_exp.demo.synthetic.ensure_synthetic` as its ``data.prepare`` step, and
conf/model/tiny_clip.yaml names :func:`soup_exp.demo.pretrain.ensure_pretrained` as its
``model.prepare`` step. The pipeline's data stage runs both (soup_exp.inputs); the rest of
soup-exp reads what they made like any dataset and checkpoint. Nothing outside this
package imports it.
"""
