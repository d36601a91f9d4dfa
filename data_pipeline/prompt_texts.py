"""The official ProgressLM prompt texts, character for character (data, not code).

Released checkpoints (ProgressLM-3B-SFT / -RL) were trained and evaluated on these strings, and the
released SFT data were made with the construction prompts. How the project assembles them:
docs/prompts.md (data_pipeline/prompts.py: eval, SFT and RL prompts) and docs/data_construction.md
(data_construction/teacher.py and unanswerable.py: CoT generation, unanswerable samples).

Source: the public repository ProgressLM/ProgressLM at commit 9945f00a72925776b5eb43450c38d2ec0bc44bc2.
The comment at each text names the files that hold it, by their paths in that repository, with these
three folders shortened:
  prompts/  eval/qwen25vl/codes/prompts/              eval: {visual,text}_demo_prompt{,_nothink}.py (run by
            run_{visual,text}_demo{,_nothink}.py); data construction: *_cot_gen.py, *_nega_prompt.py,
            text_object_replacement_prompt.py, adversarial_editing_prompt.py
  convert/  LLaMA-Factory/our_scripts/data_convert/   SFT: convert_{visual,text}_demo{,_simple}.py, utils.py
  rl/       EasyR1/progresslm/data_preprocess/        RL: build_prompts_general.py, with the
            visual_demo_prompt.py and text_demo_prompt.py next to it (which differ from the eval modules
            of the same name)
Templates take str.format fields in braces. Spelling slips ("metioned"), curly quotes and en dashes are
as in the source.
"""

# ---- system prompts -------------------------------------------------------------------------------------

# prompts/visual_demo_prompt.py; convert/convert_visual_demo.py, convert/convert_visual_demo_simple.py;
# prompts/visual_demo_prompt_cot_gen.py, prompts/visual_nega_prompt.py (VISUAL_DEMO_SYSTEM_PROMPT_INFERENCE)
VISUAL_SYSTEM = (
    "You are a progress estimator that evaluates the progress of the current state during an ongoing task based on a visual demonstration. The demonstration consists of a sequence of vision-based states and their corresponding progress value (ranging from 0% to 100%), showing how the task evolves from start to completion."
)

# prompts/visual_demo_prompt_nothink.py; rl/visual_demo_prompt.py
VISUAL_SYSTEM_EVIDENCE = (
    "You are a progress estimator specializing in evaluating the progress of an ongoing task based on visual evidence. The demonstration consists of a sequence of video frames (images) showing how the task evolves from 0% (start) to 100% (completion). Your goal is to produce a human-like reasoning chain that logically supports the given progress score."
)

# prompts/text_demo_prompt.py, prompts/text_demo_prompt_nothink.py; convert/convert_text_demo.py,
# convert/convert_text_demo_simple.py; prompts/text_demo_prompt_cot_gen.py, prompts/text_nega_prompt.py
# (TEXT_DEMO_SYSTEM_PROMPT_INFERENCE)
TEXT_SYSTEM = (
    "You are a progress estimator that evaluates the progress of the current state during an ongoing task based on a textual demonstration. The demonstration consists of a sequence of text-based steps and their corresponding progress value (ranging from 0% to 100%), showing how the task evolves from start to completion."
)

# rl/text_demo_prompt.py
RL_TEXT_SYSTEM = (
    "You are a progress estimator that evaluates the progress of an ongoing task based on a textual demonstration of its step-by-step progression.\n"
    "\n"
    "The demonstration consists of a sequence of text instructions (text_demo), each describing one step of the process.\n"
    "Each step explicitly states the corresponding progress value (ranging from 0% to 100%), showing how the task evolves from start to completion."
)

# ---- section headers ------------------------------------------------------------------------------------

# prompts/visual_demo_prompt{,_nothink,_cot_gen}.py, prompts/text_demo_prompt{_nothink,_cot_gen}.py,
# prompts/{visual,text}_nega_prompt.py; convert/convert_*.py and rl/build_prompts_general.py (inline)
DEMO_INTRO = (
    "Here is the demonstration:"
)

# prompts/text_demo_prompt.py; rl/text_demo_prompt.py
TEXT_DEMO_INTRO_ARMS = (
    "Here is the demonstration (If you see [left] [right], it indicates that this is a dual-arm robot, with the left and right arms working in coordination):"
)

# every eval, SFT and RL builder; prompts/visual_demo_prompt_cot_gen.py, prompts/visual_nega_prompt.py
CURRENT_INTRO = (
    "Here is the current state that you need to estimate:"
)

# ---- task instructions ----------------------------------------------------------------------------------

# prompts/visual_demo_prompt.py; convert/convert_visual_demo.py
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

# prompts/visual_demo_prompt_nothink.py
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

# prompts/text_demo_prompt.py; rl/text_demo_prompt.py
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

# prompts/text_demo_prompt_nothink.py
TEXT_DIRECT_TASK = (
    "Output Instruction:\n"
    "Based on the task goal, demonstration, and current image, output ONLY the estimated progress as a percentage (0%–100%), or output exactly \"n/a\" if the target is incorrect, unmatched, or any abnormal condition exists; output nothing else."
)

# convert/convert_text_demo.py
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

# convert/convert_visual_demo_simple.py
SFT_VISUAL_DIRECT_TASK = (
    "1. Check the current state image carefully.\n"
    "2. Analyze the overall task goal and visual demonstration to understand how the task progresses from start to completion.\n"
    "3. Identify the reference states from the visual demonstration that are most related to the current state image.\n"
    "4. Compare the current state image with the chosen reference state, determining whether the image is behind or after the reference state.\n"
    "5. Estimate the progress numerically as a floating-point value between 0% and 100%, or directly output the \"n/a\" if you really cannot match the current state image to any of the states from demonstration.\n"
    "\n"
    "Your answer only needs to output the final progress score you estimated, no other words needed."
)

# convert/convert_text_demo_simple.py
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

# rl/visual_demo_prompt.py
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

EVAL_VISUAL_GOAL = "The overall task goal is {goal}"  # prompts/visual_demo_prompt.py: no final period
GOAL = "The overall task goal is {goal}."  # prompts/text_demo_prompt.py; rl/ both kinds
# prompts/text_demo_prompt_nothink.py; convert/ all four converters; after "\n\n" in prompts/*_cot_gen.py and
# prompts/*_nega_prompt.py
OUR_GOAL = "Our goal is {goal}."
# prompts/visual_demo_prompt{,_nothink,_cot_gen}.py, prompts/visual_nega_prompt.py
VISUAL_SHIFTS = "The progress shifts across all given visual demos is: {shifts}"
# one demo frame of the shifts line, joined by " ": the files above, convert/utils.py, rl/build_prompts_general.py
SHIFT = "<image> {percent}%"
# one demo step, joined by "\n\n": prompts/text_demo_prompt{,_nothink,_cot_gen}.py, prompts/text_nega_prompt.py,
# rl/text_demo_prompt.py, convert/utils.py
TEXT_STEP = "Step {index}. {step}\nThe Progress for now is {percent}%."
# sft/rl: where an image goes: LLaMA-Factory/src/llamafactory/extras/constants.py (IMAGE_PLACEHOLDER, which
# mm_plugin splits on) and EasyR1/verl/utils/dataset.py
IMAGE_TAG = "<image>"
# the Qwen2.5-VL chat template's default, and LLaMA-Factory/src/llamafactory/data/template.py (qwen2_vl)
DEFAULT_SYSTEM = "You are a helpful assistant."

# ---- guided CoT generation (data construction) -----------------------------------------------------------
# prompts/visual_demo_prompt_cot_gen.py and prompts/text_demo_prompt_cot_gen.py, laid out as their 72B
# runners send them (no system message, one user message). The first text part is COT_INSTRUCTION_TRAIN +
# the demo kind's system text (VISUAL_SYSTEM / TEXT_SYSTEM) + "\n\n" + OUR_GOAL; then DEMO_INTRO, the demo,
# VISUAL_SHIFTS + CURRENT_INTRO (visual) or the TEXT_STEP blocks + COT_TEXT_CURRENT (text), the
# observation, the task text and the hint.

# prompts/visual_demo_prompt_cot_gen.py, prompts/text_demo_prompt_cot_gen.py, prompts/visual_nega_prompt.py
# (VISUAL_DEMO_SYSTEM_PROMPT_TRAIN == TEXT_DEMO_SYSTEM_PROMPT_TRAIN)
COT_INSTRUCTION_TRAIN = (
    "Given the below Task and the Ground-truth Partial Response, you only need to fill the content within <ref_think></ref_think> and <score_think></score_think> to complete the response and should not change the Ground-truth Partial Response's content within <ref></ref> and <score></score>. Note that you need to pretend you do not know the ground-truth answer and provide a coherent reasoning chain based on what is given.\n"
    '\n'
    'The Task is:\n'
)

# prompts/visual_demo_prompt_cot_gen.py (VISUAL_DEMO_INSTRUCTION_PART3)
COT_VISUAL_TASK = (
    'Your task:\n'
    '1. Check the current state image carefully.\n'
    '2. Analyze the visual demonstration to understand how the task progresses from start to completion.\n'
    '3. Identify the reference states from the visual demonstration that are most related to the current state image.\n'
    '4. Compare the current state image with the chosen reference state, determining whether the image is behind or after the reference state.\n'
    '5. Estimate the progress numerically as a floating-point value between 0% and 100%.\n'
    '6. If you really cannot match the current state image to any of the states from demonstration, you need to explain the reason within `<ref_think></ref_think>` and output "n/a" within `<ref></ref>`, `<score_think></score_think>`, and `<score></score>`.\n'
    '\n'
    'Your response **must** strictly follow this format:\n'
    '<ref_think>Reason for choosing the most related state from the demonstration as the reference or explanation of why the current state image does not match the task goal or any steps from demonstration</ref_think>\n'
    '<ref>which state from the visual demonstration is most related to the current state (output only the number of the state) or "n/a"</ref>\n'
    '<score_think>Reason for comparing the current state image with the reference state or "n/a"</score_think>\n'
    '<score>Your final estimated progress score or "n/a"</score>'
)

# prompts/text_demo_prompt_cot_gen.py, prompts/text_nega_prompt.py (TEXT_DEMO_INSTRUCTION_PART2)
COT_TEXT_CURRENT = "Here is the image of the current state that you need to estimate:"

# prompts/text_demo_prompt_cot_gen.py, prompts/text_nega_prompt.py (TEXT_DEMO_INSTRUCTION_PART3, the one in use)
COT_TEXT_TASK = (
    'Your task:\n'
    '1. Read the task goal to understand the task objective and the entity being operated on.\n'
    '2. Analyze the textual demonstration to understand how the task progresses from start to completion.\n'
    '3. Examine the current state image carefully. If the target is incorrect (different from the object metioned in task goal) or you really cannot match the current image to any step in the demonstration, you must explain the reason within <ref_think></ref_think> and output “n/a” within <ref></ref>, <score_think></score_think>, and <score></score>.\n'
    '4. If a match is possible, examine all steps in the textual demonstration, where each step represents an independent action. Identify the single step whose action is most closely related to the current state image. Then compare the current image with that reference step to determine whether it corresponds to an earlier or later stage, and finally estimate the overall progress as a floating-point value between 0% and 100%.\n'
    '\n'
    'Your response **must** strictly follow this format:\n'
    '<ref_think>\n'
    'Explain the reason for selecting the most relevant step from the demonstration.\n'
    'If the task target is incorrect, or the current state image cannot be matched to any demonstration step, explain why here.\n'
    '</ref_think>\n'
    '\n'
    '<ref>\n'
    'If a valid matching step exists, output only the step number.\n'
    'If the task target is incorrect or no step matches the current image, output only "n/a".\n'
    '</ref>\n'
    '\n'
    '<score_think>\n'
    'If a valid matching step exists, explain how you compare the current image with that step to judge progress.\n'
    'If the task target is incorrect or no step matches the current image, output only "n/a".\n'
    '</score_think>\n'
    '\n'
    '<score>\n'
    'If a valid matching step exists, output the estimated progress (0%–100%).\n'
    'If the task target is incorrect or no step matches the current image, output only "n/a".\n'
    '</score>\n'
)

# build_ground_truth_section() of prompts/{visual,text}_demo_prompt_cot_gen.py: the hint, the last text part.
COT_REF_VISUAL = "The No. {index} demo image is the most relevant frame"
COT_REF_TEXT = "The No. {index} text demo is the most relevant one"
# (Their n/a branch, "n/a (no valid reference found)" / "n/a (no valid progress estimation)", is not used:
# unanswerable records get the nega prompts below, as the release's nega runners gave them.)
COT_HINT_VISUAL = (
    "\n\nGround-truth Partial Response:\n\n"
    "    <ref_think></ref_think>\n"
    "    <ref>{ref}</ref>\n"
    "    <score_think></score_think>\n"
    "    <score>{score}</score>\n\n\n"
    "    You **must** only add content within <ref_think></ref_think> and <score_think></score_think> to the "
    "Ground-truth Partial Response and must not change what we already provided in the Ground-truth Partial "
    "Response. Then respond with the completed Ground-truth Response.\n"
)
COT_HINT_TEXT = COT_HINT_VISUAL + (
    "    Additional Hint: all the cases you meet now is all normal cases, never mistake them to n/a!\n"
    "    When filling in <ref_think> and <score_think>, base your reasoning on what you can independently "
    "observe and infer from the state, rather than referencing this description as given information. Your "
    "reasoning should appear as your own discovery, not as something taken from an external hint.\n\n"
)

# ---- guided CoT generation for unanswerable records ------------------------------------------------------
# prompts/visual_nega_prompt.py (run by run_visual_nega_72B.py) and prompts/text_nega_prompt.py (run by
# run_text_nega.py), both with no system message. Visual: the cot_gen layout with NEGA_VISUAL_TASK and
# NEGA_HINT_VISUAL. Text: NEGA_TEXT_INSTRUCTION_TRAIN + TEXT_SYSTEM + goal, the cot_gen text parts, and the
# hint BEFORE the task instructions (COT_TEXT_TASK, the same text); {original_step} is the step the
# unedited observation showed (raw_text_demo[rank] in the official input).

# prompts/text_nega_prompt.py (TEXT_DEMO_SYSTEM_PROMPT_TRAIN)
NEGA_TEXT_INSTRUCTION_TRAIN = (
    "Given the below Task, the Ground-truth Partial Response, and the Additional Hint, you only need to fill the "
    "content within <ref_think></ref_think> and <score_think></score_think> to complete the response and should "
    "not change the Ground-truth Partial Response's content within <ref></ref> and <score></score>. Note that you "
    "need to pretend you do not know the ground-truth answer and provide a coherent reasoning chain based on what "
    "is given.\n\nThe Task is:\n"
)
# prompts/visual_nega_prompt.py
NEGA_VISUAL_TASK = (
    "Your task:\n"
    "1. Analyze the overall task goal and visual demonstration to understand how the task progresses from start "
    "to completion.\n"
    "2. Check the current state image carefully.\n"
    "3. Identify the reference states from the visual demonstration that are most related to the current state "
    "image.\n"
    "4. Compare the current state image with the chosen reference state, determining whether the image is behind "
    "or after the reference state.\n"
    "5. Estimate the progress numerically as a floating-point value between 0% and 100%.\n"
    "6. If you really cannot match the current state image to any of the states from demonstration, you need to "
    "explain the reason within `<ref_think></ref_think>` and directly output \"n/a\" within `<ref></ref>`, "
    "`<score_think></score_think>`, and `<score></score>`.\n\n"
    "Your response **must** strictly follow this format:\n"
    "<ref_think>Reason for choosing the most related state from the demonstration as the reference or explanation "
    "of why the current state image does not match the task goal or any steps from demonstration</ref_think>\n"
    "<ref>which state from the visual demonstration is most related to the current state (output only the number "
    "of the state) or directly output \"n/a\" with no other words if no match reference founded.</ref>\n"
    "<score_think>Reason for comparing the current state image with the reference state or directly output "
    "\"n/a\" with no other words</score_think>\n"
    "<score>Your final estimated progress score or directly output \"n/a\" with no other words</score>\n"
)
# prompts/visual_nega_prompt.py
NEGA_HINT_VISUAL = (
    "\n\nGround-truth Partial Response:\n\n"
    "    <ref_think></ref_think>\n"
    "    <ref>n/a</ref>\n"
    "    <score_think>n/a</score_think>\n"
    "    <score>n/a</score>\n\n\n"
    "    You **must** only add content within <ref_think></ref_think> and must not change what we already "
    "provided in the Ground-truth Partial Response.\n"
    "    When filling in <ref_think>, base your reasoning on what you can independently observe and infer from the "
    "state, rather than referencing this description as given information. Your reasoning should appear as your "
    "own discovery, not as something taken from an external hint.\n"
)
# prompts/text_nega_prompt.py
NEGA_HINT_TEXT = (
    "\n\nGround-truth Partial Response:\n\n"
    "    <ref_think></ref_think>\n"
    "    <ref>n/a</ref>\n"
    "    <score_think>n/a</score_think>\n"
    "    <score>n/a</score>\n"
    "    Additional Hint: The current state image shows the step of \"{original_step}\", which obviously does not "
    "match the current task goal (mostly because the object has been replaced) or any steps from the "
    "demonstration.\n\n"
    "    You **must** only add content within <ref_think></ref_think> and <score_think></score_think> to the "
    "Ground-truth Partial Response and must not change what we already provided in the Ground-truth Partial "
    "Response. Then respond with the completed Ground-truth Response. Do not modify anything else already "
    "provided in the Ground-truth Partial Response.\n"
    "    The visual state depicts a situation that does not align with the current task goal or with any of the "
    "demonstration steps. When filling in <ref_think>, base your reasoning on what you can independently observe "
    "and infer from the state, rather than referencing this description as given information. Your reasoning "
    "should appear as your own discovery, not as something taken from an external hint.\n"
)

# ---- text unanswerable: object replacement ---------------------------------------------------------------
# prompts/text_object_replacement_prompt.py (run by run_text_object_replacement_single.py): system prompt a
# single space; user content = the observation image, then SWAP_PROMPT. {steps} is
# '["' + '", "'.join(steps) + '"]' (no JSON escaping). The indentation is part of the text.
SWAP_SYSTEM = " "
SWAP_PROMPT = (
    "Task: Modify the Task Goal and Step-by-step Instructions to make the Current Image does not match the "
    "Task Goal or any Step-by-step Instructions.\n\n"
    "    Input Information:\n"
    "    - Task Goal: {goal}\n"
    "    - Step-by-step Instructions: {steps}\n"
    "    - Current Image: [The provided image]\n\n"
    "    Editing Guidelines:\n"
    "    1. Keep the original sentence format and structure - ONLY replace the object name\n"
    "    2. For each step in Step-by-step Instructions, preserve ALL markers like [right], [left], [towards], "
    "etc. in their EXACT original positions\n\n"
    "    Output Format:\n"
    '    <edited_goal> "put your edited task goal here" </edited_goal>\n\n'
    "    <edited_demo>\n"
    '    ["your edited step 1", "your edited step 2", "your edited step 3", ..., "your edited step n"]\n'
    "    </edited_demo>"
)

# ---- image unanswerable: adversarial edit proposal -------------------------------------------------------
# prompts/adversarial_editing_prompt.py (run by run_adversarial_editing_single.py): system prompt
# EDIT_SYSTEM; user content = the observation image, then EDIT_PROMPT. {steps} is "1. step\n2. step..."
# ("" without steps); {index} the 1-based matching step, {step} its text.
EDIT_SYSTEM = (
    'You are an expert at adversarial image editing for instruction following tasks. Your goal is to analyze robotic manipulation tasks and strategically edit images to make them violate specific instructions while maintaining visual realism.'
)
EDIT_PROMPT = (
    "Task: Adversarial Image Editing for Instruction Following\n"
    "Input Information:\n\n"
    "Task Goal: {goal}\n"
    "Step-by-step Instructions:\n"
    "{steps}\n"
    "Current Image: [The provided image]\n"
    'Corresponding Instruction: Step {index} - "{step}"\n\n'
    "Your Task:\n"
    "You are given an image that corresponds to a specific step in a multi-step robotic manipulation task. "
    "Your goal is to edit this image to make it no longer align with the corresponding instruction, causing "
    "the task to fail.\n\n"
    "Editing Guidelines:\n\n"
    "Modify key objects or elements in the image using one of the following strategies:\n"
    "1. Color Change: Alter the color of critical objects (e.g., change a red apple to green)\n"
    "2. Object Replacement: Replace the target object with a different object (e.g., replace an egg with an "
    "orange)\n"
    "3. Occlusion/Removal: Hide or remove key objects from the scene\n\n\n\n"
    "Requirements:\n\n"
    "1. The edited image should clearly violate the corresponding instruction\n"
    "2. IMPORTANT: Maintain visual realism and coherence - the edited image must look natural and believable\n"
    "3. Ensure the edit would cause the overall task goal to fail\n"
    "4. The modification should be semantically meaningful (not just noise or blur)\n\n"
    "Output Format:\n"
    "<strategy_think>\n"
    "Analyze the current instruction and image content. Think step by step about which editing strategy would "
    "most effectively violate this instruction while maintaining realism. Consider the key objects involved and "
    "how modifying them would break the instruction.\n"
    "</strategy_think>\n\n"
    '<strategy> State the single strategy you selected from the editing guidelines (e.g., "Object Replacement" '
    'or "Color Change") </strategy>\n\n'
    "<prompt_think>\n"
    "Think step by step about how to formulate a clear and effective image editing prompt. Consider: What "
    "specific change to make? Which objects to target? What details are needed for realism?\n"
    "</prompt_think>\n\n"
    "<prompt> Write a concise image editing prompt (maximum 20 words) that clearly instructs the editing model "
    "what to change in the image. </prompt>"
)
EDIT_UNKNOWN_STEP = "Unknown instruction"  # the step text when there are no steps
