"""The methods of pointtune (and ``finetune`` and ``seg``, the supervised transfer of any pretrained encoder to
classification and to scene segmentation), one module each. Nothing is imported here: each module is declared
as an entry point of the group ``pointtune.methods`` in pyproject.toml and imported when its name is first
looked up (:func:`pointtune.method.get_method`)."""
