"""Baselines the paper compares with: TCAV concept scores, input attribution maps, and the
model-randomisation sanity check of attribution maps."""
from lsei_jax.baselines.attribution import (check_completeness, completeness_gap,
                                            gradient_x_input, integrated_gradients,
                                            occlusion, occlusion_masks, smoothgrad,
                                            target_logits, vanilla_gradient)
from lsei_jax.baselines.sanity import (cascading_randomization, flag_insensitive,
                                       layer_paths, model_randomization, normalize_abs,
                                       spearman, ssim)
from lsei_jax.baselines.tcav import (class_gradients, mean_difference_cav,
                                     student_t_two_sided_p, tcav, tcav_scores, tcav_table,
                                     train_cav, ttest_ind)

__all__ = [
    'vanilla_gradient', 'gradient_x_input', 'integrated_gradients', 'smoothgrad',
    'occlusion', 'occlusion_masks', 'target_logits', 'completeness_gap',
    'check_completeness',
    'tcav', 'tcav_table', 'tcav_scores', 'train_cav', 'mean_difference_cav',
    'class_gradients', 'ttest_ind',
    'student_t_two_sided_p',
    'cascading_randomization', 'model_randomization', 'flag_insensitive', 'layer_paths',
    'spearman', 'ssim', 'normalize_abs',
]
