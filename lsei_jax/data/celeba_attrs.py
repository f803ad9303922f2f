"""CelebA constants shared by the loader, the preparation command and the fake data."""

# The 40 attributes in the order of list_attr_celeba.txt's header.
ATTRIBUTES = tuple((
    '5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips '
    'Big_Nose Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin '
    'Eyeglasses Goatee Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open '
    'Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline '
    'Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat '
    'Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young').split())

# The five original files TFDS celeb_a 2.1.0 needs (names as in its checksums.tsv).
FILES = {'images': 'img_align_celeba.zip', 'attributes': 'list_attr_celeba.txt',
         'partition': 'list_eval_partition.txt',
         'landmarks': 'list_landmarks_align_celeba.txt', 'identity': 'identity_CelebA.txt'}

TFDS_NAME = 'celeb_a'
TFDS_VERSION = '2.1.0'
SPLITS = ('train', 'validation', 'test')
