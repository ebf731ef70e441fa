# Writes this directory's small datasets, each in its real published schema
# (python3 gen.py). They exist so that every reader is covered even where
# the third-party fixtures (../shared/fixtures) are absent, and they carry
# the quirks the readers must handle.
import json, os, pickle

def w(path, data, mode="w"):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, mode) as f:
        f.write(data)

# COCO: categories after annotations, a string id, an integral float id, a
# crowd box, the "attributes" extension, an unknown category id and a box
# with three numbers (both rejected by the reader).
coco = {
    "info": {"description": "groundmesh test"},
    "annotations": [
        {"id": 1, "image_id": 10, "category_id": 3, "bbox": [10.5, 20.0, 30.0, 40.0], "area": 1200.0,
         "iscrowd": 0, "segmentation": [[10.5, 20, 40.5, 20, 40.5, 60, 10.5, 60]],
         "attributes": {"color": "red", "occluded": False}},
        {"id": 2, "image_id": 10, "category_id": 5, "bbox": [0, 0, 64, 48], "area": 3072, "iscrowd": 1,
         "segmentation": {"counts": [0, 3072], "size": [48, 64]}},
        {"id": 3, "image_id": 11, "category_id": 99, "bbox": [1, 1, 2, 2], "area": 4, "iscrowd": 0, "segmentation": []},
        {"id": 4, "image_id": 11, "category_id": 3, "bbox": [1, 1, 2], "area": 4, "iscrowd": 0, "segmentation": []},
        {"id": 5.0, "image_id": "11", "category_id": 5, "bbox": [5, 6, 7, 8], "area": 56, "iscrowd": 0, "segmentation": []},
    ],
    "images": [
        {"id": 10, "file_name": "000010.png", "width": 64, "height": 48, "license": 1},
        {"id": 11, "file_name": "000011.png", "width": 64, "height": 48},
    ],
    "licenses": [{"id": 1, "name": "test", "url": ""}],
    "categories": [{"id": 3, "name": "car", "supercategory": "vehicle"}, {"id": 5, "name": "person", "supercategory": "person"}],
}
w("coco/annotations/instances_val2017.json", json.dumps(coco, indent=1))

# RefCOCO (REFER layout): refs(unc).p pickled by Python (protocol 2, as
# cPickle.dump(..., 2) writes), refs(google).p as the less preferred variant,
# instances.json without splits.
inst = {
    "images": [{"id": 581857, "file_name": "COCO_train2014_000000581857.jpg", "width": 640, "height": 480},
               {"id": 42, "file_name": "COCO_train2014_000000000042.jpg", "width": 320, "height": 240}],
    "annotations": [{"id": 1719310, "image_id": 581857, "category_id": 1, "bbox": [103.93, 299.99, 134.22, 177.01], "area": 1, "iscrowd": 0, "segmentation": []},
                    {"id": 1724819, "image_id": 581857, "category_id": 1, "bbox": [9.02, 22.17, 200.0, 300.0], "area": 1, "iscrowd": 0, "segmentation": []},
                    {"id": 7, "image_id": 42, "category_id": 18, "bbox": [1, 2, 3, 4], "area": 12, "iscrowd": 0, "segmentation": []}],
    "categories": [{"id": 1, "name": "person", "supercategory": "person"}, {"id": 18, "name": "dog", "supercategory": "animal"}],
}
refs = [
    {"sent_ids": [0, 1], "file_name": "COCO_train2014_000000581857_16.jpg", "ann_id": 1719310, "ref_id": 0,
     "image_id": 581857, "split": "testB", "category_id": 1,
     "sentences": [{"tokens": ["the", "lady", "with", "the", "blue", "shirt"], "raw": "THE LADY WITH THE BLUE SHIRT",
                    "sent_id": 0, "sent": "the lady with the blue shirt"},
                   {"tokens": ["lady", "w", "back", "to", "us"], "raw": "lady w back to us", "sent_id": 1, "sent": "lady w back to us"}]},
    {"sent_ids": [2], "file_name": "COCO_train2014_000000581857_17.jpg", "ann_id": 1724819, "ref_id": 1,
     "image_id": 581857, "split": "testB", "category_id": 1,
     "sentences": [{"tokens": ["woman", "left"], "raw": "woman left", "sent_id": 2, "sent": "woman left"}]},
    {"sent_ids": [3], "file_name": "COCO_train2014_000000000042_7.jpg", "ann_id": 7, "ref_id": 2,
     "image_id": 42, "split": "train", "category_id": 18,
     "sentences": [{"tokens": ["dog"], "raw": "Dog!", "sent_id": 3, "sent": ""}]},
    {"sent_ids": [], "file_name": "x.jpg", "ann_id": 7, "ref_id": 3, "image_id": 42, "split": "train",
     "category_id": 18, "sentences": []},
]
w("refcoco/instances.json", json.dumps(inst))
w("refcoco/refs(unc).p", pickle.dumps(refs, protocol=2), "wb")
w("refcoco/refs(google).p", pickle.dumps(refs[:1], protocol=0), "wb")
w("refcoco_json/instances.json", json.dumps(inst))
w("refcoco_json/refs(unc).json", json.dumps(refs))

# Visual Genome v1.0 quirks: "id" for the image id, objects with "name"
# (not "names"), no image_data.json (sizes come from the image files).
vg_objects = [{"id": 7, "image_url": "https://example.org/VG_100K/7.jpg", "objects": [
    {"id": 70, "x": 1, "y": 2, "w": 10, "h": 20, "name": "cat", "synsets": ["cat.n.01"]},
    {"id": 71, "x": 5, "y": 5, "w": 5, "h": 5, "names": ["mat", "rug"], "synsets": []},
    {"id": 72, "x": 5, "y": 5, "w": 5, "h": 5, "names": []}]}]
vg_rels = [{"image_id": 7, "relationships": [
    {"relationship_id": 700, "predicate": "sitting on ", "synsets": ["sit.v.01"],
     "subject": {"object_id": 70, "name": "cat", "x": 1, "y": 2, "w": 10, "h": 20, "synsets": ["cat.n.01"]},
     "object": {"object_id": 73, "name": "floor", "x": 0, "y": 0, "w": 30, "h": 30, "synsets": ["floor.n.01"]}}]}]
vg_regions = [{"id": 7, "regions": [{"region_id": 7000, "image_id": 7, "phrase": "a cat on a mat", "x": 0, "y": 1, "width": 20, "height": 25}]}]
w("vg/objects.json", json.dumps(vg_objects))
w("vg/relationships.json", json.dumps(vg_rels))
w("vg/region_descriptions.json", json.dumps(vg_regions))

# Flickr30k Entities: official layout, split lists, a phrase with two types,
# a notvisual phrase, a nobndbox entity, an entity with two boxes, a box
# shared by two entities, a scene entity with a box.
w("flickr/Sentences/1000.txt",
  "[/EN#1/people A man] in [/EN#2/clothing/other a blue shirt] walks past [/EN#3/scene a shop] .\n"
  "[/EN#4/people Two people] and [/EN#0/notvisual someone] watch [/EN#5/other a parade] .\n")
w("flickr/Annotations/1000.xml", """<annotation>
\t<filename>1000.jpg</filename>
\t<size><width>100</width><height>80</height><depth>3</depth></size>
\t<object><name>1</name><name>4</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>40</xmax><ymax>80</ymax></bndbox></object>
\t<object><name>4</name><bndbox><xmin>51</xmin><ymin>11</ymin><xmax>90</xmax><ymax>70</ymax></bndbox></object>
\t<object><name>2</name><bndbox><xmin>10</xmin><ymin>20</ymin><xmax>30</xmax><ymax>40</ymax></bndbox></object>
\t<object><name>3</name><scene>1</scene><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>100</xmax><ymax>80</ymax></bndbox></object>
\t<object><name>5</name><scene>0</scene><nobndbox>1</nobndbox></object>
</annotation>
""")
w("flickr/Sentences/1001.txt", "[/EN#9/animals A dog] runs .\n")
w("flickr/Annotations/1001.xml", "<annotation><filename>1001.jpg</filename><size><width>10</width><height>10</height></size><object><name>9</name>")
w("flickr/val.txt", "1000\n")

# ODVG: a detection file with a label map (one instance only by label, one
# unknown label) and a grounding file with a multi-box region and a bad line.
det = [
    {"filename": "a.jpg", "height": 50, "width": 60, "detection": {"instances": [
        {"bbox": [1, 2, 30, 40], "label": 0, "category": "dog"},
        {"bbox": [10, 10, 20, 20], "label": 1},
        {"bbox": [10, 10, 20, 20], "label": 7}]}},
]
w("odvg/coco_train_odvg.jsonl", "\n".join(json.dumps(x) for x in det) + "\n")
w("odvg/label_map.json", json.dumps({"0": "dog", "1": "cat"}))
gr = [
    json.dumps({"filename": "b.jpg", "height": 40, "width": 40, "grounding": {"caption": "two birds and a tree",
        "regions": [{"bbox": [[1, 1, 10, 10], [20, 20, 30, 30]], "phrase": "two birds", "tokens_positive": [[0, 9]]},
                    {"bbox": [0, 0, 40, 40], "phrase": "a tree", "tokens_positive": [[14, 20]]}]}}),
    "{not json",
    json.dumps({"filename": "c.jpg", "height": 40, "width": 40, "grounding": {"caption": "x", "regions": [{"bbox": [1, 2, 3], "phrase": "x"}]}}),
]
w("odvg/grit_val_odvg.jsonl", "\n".join(gr))  # no trailing newline
