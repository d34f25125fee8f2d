from .maskgit import GUIDANCE_SCHEDULES, MASK_SCHEDULES, maskgit_sample

__all__ = ["GUIDANCE_SCHEDULES", "MASK_SCHEDULES", "maskgit_sample"]
