"""The official ProgressLM prompt texts, character for character (data, not code).

Released checkpoints (ProgressLM-3B-SFT / -RL) were trained and evaluated on these strings; see
docs/prompts.md for how data_pipeline/prompts.py assembles them per stage and mode.

Source: the public repository ProgressLM/ProgressLM, commit 9945f00a72925776b5eb43450c38d2ec0bc44bc2:
  eval  eval/qwen25vl/codes/prompts/{visual,text}_demo_prompt{,_nothink}.py (run_{visual,text}_demo{,_nothink}.py)
  sft   LLaMA-Factory/our_scripts/data_convert/convert_{visual,text}_demo{,_simple}.py (+ utils.py)
  rl    EasyR1/progresslm/data_preprocess/build_prompts_general.py with the visual_demo_prompt.py and
        text_demo_prompt.py next to it (which differ from the eval modules of the same name)
Each comment names every file that holds the text. Spelling slips ("metioned"), curly quotes and en
dashes are as in the source.
"""

# ---- system prompts -------------------------------------------------------------------------------------

# eval visual_demo_prompt.py; sft convert_visual_demo.py, convert_visual_demo_simple.py
VISUAL_SYSTEM = (
    "You are a progress estimator that evaluates the progress of the current state during an ongoing task based on a visual demonstration. The demonstration consists of a sequence of vision-based states and their corresponding progress value (ranging from 0% to 100%), showing how the task evolves from start to completion."
)

# eval visual_demo_prompt_nothink.py; rl data_preprocess/visual_demo_prompt.py
VISUAL_SYSTEM_EVIDENCE = (
    "You are a progress estimator specializing in evaluating the progress of an ongoing task based on visual evidence. The demonstration consists of a sequence of video frames (images) showing how the task evolves from 0% (start) to 100% (completion). Your goal is to produce a human-like reasoning chain that logically supports the given progress score."
)

# eval text_demo_prompt.py, text_demo_prompt_nothink.py; sft convert_text_demo.py, convert_text_demo_simple.py
TEXT_SYSTEM = (
    "You are a progress estimator that evaluates the progress of the current state during an ongoing task based on a textual demonstration. The demonstration consists of a sequence of text-based steps and their corresponding progress value (ranging from 0% to 100%), showing how the task evolves from start to completion."
)

# rl data_preprocess/text_demo_prompt.py
RL_TEXT_SYSTEM = (
    "You are a progress estimator that evaluates the progress of an ongoing task based on a textual demonstration of its step-by-step progression.\n"
    "\n"
    "The demonstration consists of a sequence of text instructions (text_demo), each describing one step of the process.\n"
    "Each step explicitly states the corresponding progress value (ranging from 0% to 100%), showing how the task evolves from start to completion."
)

# ---- section headers ------------------------------------------------------------------------------------

# eval visual_demo_prompt*.py, text_demo_prompt_nothink.py; sft and rl (inline)
DEMO_INTRO = (
    "Here is the demonstration:"
)

# eval text_demo_prompt.py; rl data_preprocess/text_demo_prompt.py
TEXT_DEMO_INTRO_ARMS = (
    "Here is the demonstration (If you see [left] [right], it indicates that this is a dual-arm robot, with the left and right arms working in coordination):"
)

# every builder
CURRENT_INTRO = (
    "Here is the current state that you need to estimate:"
)

# ---- task instructions ----------------------------------------------------------------------------------

# eval visual_demo_prompt.py; sft convert_visual_demo.py
VISUAL_THINK_TASK = (
    "Your task:\n"
    "1. Check the current state image carefully.\n"
    "2. Analyze the overall task goal and visual demonstration to understand how the task progresses from start to completion.\n"
    "3. Identify the reference states from the visual demonstration that are most related to the current state image.\n"
    "4. Compare the current state image with the chosen reference state, determining whether the image is behind or after the reference state.\n"
    "5. Estimate the progress numerically as a floating-point value between 0% and 100%.\n"
    "6. If you really cannot match the current state image to any of the states from demonstration, you need to explain the reason within `<ref_think></ref_think>` and output \"n/a\" within `<ref></ref>`, `<score_think></score_think>`, and `<score></score>`.\n"
    "\n"
    "Your response **must** strictly follow this format:\n"
    "<ref_think>Reason for choosing the most related state from the demonstration as the reference or explanation of why the current state image does not match the task goal or any steps from demonstration</ref_think>\n"
    "<ref>which state from the visual demonstration is most related to the current state (output only the number of the state) or \"n/a\"</ref>\n"
    "<score_think>Reason for comparing the current state image with the reference state or \"n/a\"</score_think>\n"
    "<score>Your final estimated progress score or \"n/a\"</score>"
)

# eval visual_demo_prompt_nothink.py
VISUAL_DIRECT_TASK = (
    "Your task:\n"
    "1. Check the current state image carefully.\n"
    "2. Analyze the overall task goal and visual demonstration to understand how the task progresses from start to completion.\n"
    "3. Identify the reference states from the visual demonstration that are most related to the current state image.\n"
    "4. Compare the current state image with the chosen reference state, determining whether the image is behind or after the reference state.\n"
    "5. Estimate the progress numerically as a floating-point value between 0% and 100%, or directly output the \"n/a\" if you really cannot match the current state image to any of the states from demonstration.\n"
    "\n"
    "Your answer only needs to output the final progress score you estimated, no other words needed."
)

# eval text_demo_prompt.py; rl data_preprocess/text_demo_prompt.py
TEXT_THINK_TASK = (
    "Your task:\n"
    "1. Read the task goal to understand the task objective and the entity being operated on.\n"
    "2. Analyze the textual demonstration to understand how the task progresses from start to completion.\n"
    "3. Examine the current state image carefully. If the target is incorrect (different from the object metioned in task goal) or you really cannot match the current image to any step in the demonstration, you must explain the reason within <ref_think></ref_think> and output \"n/a\" within <ref></ref>, <score_think></score_think>, and <score></score>.\n"
    "4. If a match is possible, examine all steps in the textual demonstration, where each step represents an independent action. Identify the single step whose action is most closely related to the current state image. Then compare the current image with that reference step to determine whether it corresponds to an earlier or later stage, and finally estimate the overall progress as a floating-point value between 0% and 100%.\n"
    "\n"
    "Your response **must** strictly follow this format:\n"
    "<ref_think>\n"
    "Explain the reason for selecting the most relevant step from the demonstration.\n"
    "If the task target is incorrect, or the current state image cannot be matched to any demonstration step, explain why here.\n"
    "</ref_think>\n"
    "\n"
    "<ref>\n"
    "If a valid matching step exists, output only the step number.\n"
    "If the task target is incorrect or no step matches the current image, output only \"n/a\".\n"
    "Please ensure that this is the same as the ref value you reasoned before.\n"
    "</ref>\n"
    "\n"
    "<score_think>\n"
    "If a valid matching step exists, explain how you compare the current image with that step to judge progress.\n"
    "If the task target is incorrect or no step matches the current image, output only \"n/a\".\n"
    "</score_think>\n"
    "\n"
    "<score>\n"
    "If a valid matching step exists, output the estimated progress (0%–100%).\n"
    "If the task target is incorrect or no step matches the current image, output only \"n/a\".\n"
    "</score>\n"
)

# eval text_demo_prompt_nothink.py
TEXT_DIRECT_TASK = (
    "Output Instruction:\n"
    "Based on the task goal, demonstration, and current image, output ONLY the estimated progress as a percentage (0%–100%), or output exactly \"n/a\" if the target is incorrect, unmatched, or any abnormal condition exists; output nothing else."
)

# sft convert_text_demo.py
SFT_TEXT_THINK_TASK = (
    "Your task:\n"
    "1. Read the task goal to understand the task objective and the entity being operated on.\n"
    "2. Analyze the textual demonstration to understand how the task progresses from start to completion.\n"
    "3. Examine the current state image carefully. If the target is incorrect (different from the object metioned in task goal) or you really cannot match the current image to any step in the demonstration, you must explain the reason within <ref_think></ref_think> and output “n/a” within <ref></ref>, <score_think></score_think>, and <score></score>.\n"
    "4. If a match is possible, examine all steps in the textual demonstration, where each step represents an independent action. Identify the single step whose action is most closely related to the current state image. Then compare the current image with that reference step to determine whether it corresponds to an earlier or later stage, and finally estimate the overall progress as a floating-point value between 0% and 100%.\n"
    "\n"
    "Your response **must** strictly follow this format:\n"
    "<ref_think>\n"
    "Explain the reason for selecting the most relevant step from the demonstration.\n"
    "If the task target is incorrect, or the current state image cannot be matched to any demonstration step, explain why here.\n"
    "</ref_think>\n"
    "\n"
    "<ref>\n"
    "If a valid matching step exists, output only the step number.\n"
    "If the task target is incorrect or no step matches the current image, output only \"n/a\".\n"
    "</ref>\n"
    "\n"
    "<score_think>\n"
    "If <ref> is already determined to be \"n/a\", output only \"n/a\".\n"
    "If a valid matching step exists, explain how you compare the current image with that step to judge progress.\n"
    "</score_think>\n"
    "\n"
    "<score>\n"
    "If <ref> is already determined to be \"n/a\", output only \"n/a\".\n"
    "If a valid matching step exists, output the estimated progress (0%–100%).\n"
    "</score>\n"
)

# sft convert_visual_demo_simple.py
SFT_VISUAL_DIRECT_TASK = (
    "1. Check the current state image carefully.\n"
    "2. Analyze the overall task goal and visual demonstration to understand how the task progresses from start to completion.\n"
    "3. Identify the reference states from the visual demonstration that are most related to the current state image.\n"
    "4. Compare the current state image with the chosen reference state, determining whether the image is behind or after the reference state.\n"
    "5. Estimate the progress numerically as a floating-point value between 0% and 100%, or directly output the \"n/a\" if you really cannot match the current state image to any of the states from demonstration.\n"
    "\n"
    "Your answer only needs to output the final progress score you estimated, no other words needed."
)

# sft convert_text_demo_simple.py
SFT_TEXT_DIRECT_TASK = (
    "Your Task:\n"
    "1. Check the current state image carefully.\n"
    "2. Analyze the textual demonstration to understand how the task progresses from start to completion.\n"
    "3. Identify the reference step from the textual demonstration that are most related to the current state image.\n"
    "4. Compare the current state image with the chosen reference step, determining whether the image is behind or after the reference step.\n"
    "5. Estimate the progress numerically as a floating-point value between 0% and 100%, or directly output n/a if you really cannot match the current state image to any of the steps from demonstration.\n"
    "\n"
    "Your answer only needs to output the final progress score you estimated, no other words needed."
)

# rl data_preprocess/visual_demo_prompt.py
RL_VISUAL_THINK_TASK = (
    "Your task:\n"
    "1. Check the current state image carefully.\n"
    "2. Analyze the overall task goal and visual demonstration to understand how the task progresses from start to completion.\n"
    "3. Identify the reference states from the visual demonstration that are most related to the current state image.\n"
    "4. Compare the current state image with the chosen reference state, determining whether the image is behind or after the reference state.\n"
    "5. Estimate the progress numerically as a floating-point value between 0% and 100%.\n"
    "6. If you really cannot match the current state image to any of the states from demonstration, you need to explain the reason within `<ref_think></ref_think>` and output \"n/a\" within `<ref></ref>`, `<score_think></score_think>`, and `<score></score>`.\n"
    "\n"
    "Your response **must** strictly follow this format:\n"
    "<ref_think>Reason for choosing the most related state from the demonstration as the reference or explanation of why the current state image does not match the task goal or any steps from demonstration</ref_think>\n"
    "<ref>which state from the visual demonstration is most related to the current state (output only the number of the state) or \"n/a\". Please ensure that this is the same as the ref value you reasoned before.</ref>\n"
    "<score_think>Reason for comparing the current state image with the reference state or directly output \"n/a\" if the task target is incorrect or no demonstration matches the current image.</score_think>\n"
    "<score>Your final estimated progress score or \"n/a\"</score>"
)


# ---- formats built around them (f-strings in the builders) -----------------------------------------------

EVAL_VISUAL_GOAL = "The overall task goal is {goal}"  # eval visual_demo_prompt.py: no final period
GOAL = "The overall task goal is {goal}."  # eval text_demo_prompt.py; rl both kinds
OUR_GOAL = "Our goal is {goal}."  # eval text_demo_prompt_nothink.py; sft all four converters
VISUAL_SHIFTS = "The progress shifts across all given visual demos is: {shifts}"  # eval visual prompts
SHIFT = "<image> {percent}%"  # one demo frame of the shifts line, joined by " "; literal text in eval
TEXT_STEP = "Step {index}. {step}\nThe Progress for now is {percent}%."  # one demo step, joined by "\n\n"
IMAGE_TAG = "<image>"  # sft/rl: where an image goes (LLaMA-Factory's mm_plugin and EasyR1's dataset split on it)
DEFAULT_SYSTEM = "You are a helpful assistant."  # Qwen2.5-VL chat template and LLaMA-Factory qwen2_vl default
