"""The official COCO 2017 detection categories, and the categories of a model's class list.

Darknet's ``coco.names`` lists the same 80 classes in the same order as COCO, but COCO's
category ids run 1..90 with gaps (ids of categories dropped before release) and six names are
spelled differently. :data:`DARKNET_TO_COCO_NAMES` maps those spellings:

============  ============
darknet       COCO 2017
============  ============
motorbike     motorcycle
aeroplane     airplane
sofa          couch
pottedplant   potted plant
diningtable   dining table
tvmonitor     tv
============  ============

:func:`categories_for` gives, for a model's class list (index = ``class_id``), the COCO
categories: the official ids and names when the list is COCO's 80 classes (in either spelling),
else ids 1..N with the model's own names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from yolov4.coco import COCO_CLASS_NAMES

#: ``(id, name, supercategory)`` of the 80 COCO 2017 detection categories, in class order.
COCO_CATEGORIES: tuple[tuple[int, str, str], ...] = (
    (1, "person", "person"),
    (2, "bicycle", "vehicle"),
    (3, "car", "vehicle"),
    (4, "motorcycle", "vehicle"),
    (5, "airplane", "vehicle"),
    (6, "bus", "vehicle"),
    (7, "train", "vehicle"),
    (8, "truck", "vehicle"),
    (9, "boat", "vehicle"),
    (10, "traffic light", "outdoor"),
    (11, "fire hydrant", "outdoor"),
    (13, "stop sign", "outdoor"),
    (14, "parking meter", "outdoor"),
    (15, "bench", "outdoor"),
    (16, "bird", "animal"),
    (17, "cat", "animal"),
    (18, "dog", "animal"),
    (19, "horse", "animal"),
    (20, "sheep", "animal"),
    (21, "cow", "animal"),
    (22, "elephant", "animal"),
    (23, "bear", "animal"),
    (24, "zebra", "animal"),
    (25, "giraffe", "animal"),
    (27, "backpack", "accessory"),
    (28, "umbrella", "accessory"),
    (31, "handbag", "accessory"),
    (32, "tie", "accessory"),
    (33, "suitcase", "accessory"),
    (34, "frisbee", "sports"),
    (35, "skis", "sports"),
    (36, "snowboard", "sports"),
    (37, "sports ball", "sports"),
    (38, "kite", "sports"),
    (39, "baseball bat", "sports"),
    (40, "baseball glove", "sports"),
    (41, "skateboard", "sports"),
    (42, "surfboard", "sports"),
    (43, "tennis racket", "sports"),
    (44, "bottle", "kitchen"),
    (46, "wine glass", "kitchen"),
    (47, "cup", "kitchen"),
    (48, "fork", "kitchen"),
    (49, "knife", "kitchen"),
    (50, "spoon", "kitchen"),
    (51, "bowl", "kitchen"),
    (52, "banana", "food"),
    (53, "apple", "food"),
    (54, "sandwich", "food"),
    (55, "orange", "food"),
    (56, "broccoli", "food"),
    (57, "carrot", "food"),
    (58, "hot dog", "food"),
    (59, "pizza", "food"),
    (60, "donut", "food"),
    (61, "cake", "food"),
    (62, "chair", "furniture"),
    (63, "couch", "furniture"),
    (64, "potted plant", "furniture"),
    (65, "bed", "furniture"),
    (67, "dining table", "furniture"),
    (70, "toilet", "furniture"),
    (72, "tv", "electronic"),
    (73, "laptop", "electronic"),
    (74, "mouse", "electronic"),
    (75, "remote", "electronic"),
    (76, "keyboard", "electronic"),
    (77, "cell phone", "electronic"),
    (78, "microwave", "appliance"),
    (79, "oven", "appliance"),
    (80, "toaster", "appliance"),
    (81, "sink", "appliance"),
    (82, "refrigerator", "appliance"),
    (84, "book", "indoor"),
    (85, "clock", "indoor"),
    (86, "vase", "indoor"),
    (87, "scissors", "indoor"),
    (88, "teddy bear", "indoor"),
    (89, "hair drier", "indoor"),
    (90, "toothbrush", "indoor"),
)

#: Darknet ``coco.names`` spellings that differ from COCO 2017's category names.
DARKNET_TO_COCO_NAMES: dict[str, str] = {
    "motorbike": "motorcycle",
    "aeroplane": "airplane",
    "sofa": "couch",
    "pottedplant": "potted plant",
    "diningtable": "dining table",
    "tvmonitor": "tv",
}

COCO_NAMES: tuple[str, ...] = tuple(name for _, name, _ in COCO_CATEGORIES)
#: Supercategory of a model's own (non-COCO) classes.
CUSTOM_SUPERCATEGORY = "object"


@dataclass(frozen=True)
class Category:
    """One COCO category and the model class it stands for."""

    class_id: int  # index into the model's class list
    class_name: str  # the model's spelling
    id: int  # COCO category id
    name: str  # COCO category name
    supercategory: str

    def to_coco(self) -> dict:
        return {"id": self.id, "name": self.name, "supercategory": self.supercategory}


def coco_name(name: str) -> str:
    """``name`` in COCO 2017 spelling (darknet spellings mapped, others unchanged)."""
    return DARKNET_TO_COCO_NAMES.get(name, name)


def is_coco_class_list(class_names: Sequence[str]) -> bool:
    """Whether the list is COCO's 80 classes in COCO order (darknet or COCO spelling)."""
    names = tuple(class_names)
    return names in (COCO_CLASS_NAMES, COCO_NAMES)


def categories_for(class_names: Sequence[str]) -> list[Category]:
    """COCO categories for a model's class list, by class id.

    COCO-trained models (the 80 classes in COCO order) get the official ids 1..90 and names;
    any other model gets ids ``class_id + 1`` and its own names.
    """
    if is_coco_class_list(class_names):
        return [
            Category(class_id, class_name, cat_id, name, supercategory)
            for class_id, (class_name, (cat_id, name, supercategory)) in enumerate(
                zip(class_names, COCO_CATEGORIES)
            )
        ]
    return [
        Category(class_id, name, class_id + 1, name, CUSTOM_SUPERCATEGORY)
        for class_id, name in enumerate(class_names)
    ]
