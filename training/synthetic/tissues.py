"""Soft-tissue classes of the synthetic label map and their typical CT numbers.

Bone is not a class here: it is painted as an anti-aliased occupancy on top of the soft tissue
(see :class:`canvas.Canvas`), so its partial-volume look survives coarse grids.
"""


AIR = 0
FAT = 1
MUSCLE = 2
SOFT = 3  # generic parenchyma (spleen, pancreas, bowel wall, thyroid...)
LIVER = 4
KIDNEY = 5
BLOOD = 6  # aorta, IVC, heart chambers
LUNG = 7
GAS = 8  # bowel gas, trachea
BOWEL = 9  # bowel content (mottled)
FLUID = 10  # bladder, cerebrospinal fluid
DISC = 11
CANAL = 12  # thecal sac and epidural fat
CARTILAGE = 13  # costal cartilage
METAL = 14
TABLE = 15  # patient table / cushion
BRAIN = 16
NUM_TISSUES = 17

NAMES = {v: k for k, v in dict(AIR=AIR, FAT=FAT, MUSCLE=MUSCLE, SOFT=SOFT, LIVER=LIVER, KIDNEY=KIDNEY,
                               BLOOD=BLOOD, LUNG=LUNG, GAS=GAS, BOWEL=BOWEL, FLUID=FLUID, DISC=DISC,
                               CANAL=CANAL, CARTILAGE=CARTILAGE, METAL=METAL, TABLE=TABLE,
                               BRAIN=BRAIN).items()}

#: (mean HU, spread of the per-case mean, fine texture std) for realistic, non-contrast CT
CT_HU: dict[int, tuple[float, float, float]] = {
    AIR: (-1000.0, 5.0, 5.0),
    FAT: (-100.0, 15.0, 12.0),
    MUSCLE: (50.0, 8.0, 10.0),
    SOFT: (45.0, 10.0, 10.0),
    LIVER: (58.0, 10.0, 8.0),
    KIDNEY: (35.0, 8.0, 8.0),
    BLOOD: (42.0, 8.0, 6.0),
    LUNG: (-850.0, 40.0, 60.0),
    GAS: (-950.0, 40.0, 30.0),
    BOWEL: (10.0, 25.0, 30.0),
    FLUID: (10.0, 6.0, 5.0),
    DISC: (80.0, 15.0, 12.0),
    CANAL: (15.0, 10.0, 10.0),
    CARTILAGE: (110.0, 40.0, 30.0),
    METAL: (3000.0, 0.0, 100.0),
    TABLE: (-300.0, 200.0, 50.0),
    BRAIN: (35.0, 5.0, 5.0),
}

#: bone: (cancellous mean, spread, cortical mean, spread), HU at full occupancy
BONE_HU = (210.0, 60.0, 1100.0, 250.0)
