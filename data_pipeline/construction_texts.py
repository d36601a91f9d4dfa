"""Prompt texts of the official data-construction scripts, as data, each with its source.

Source repository: github.com/ProgressLM/ProgressLM at commit 9945f00a72925776b5eb43450c38d2ec0bc44bc2
(paths below are inside it). The texts are reproduced character for character (the released SFT data
were made with them); the code that assembles them is this project's own (data_pipeline/teacher.py,
data_pipeline/unanswerable.py). Templates take str.format fields in braces. See docs/data_construction.md.
"""

# ---- guided CoT generation -----------------------------------------------------------------------
# eval/qwen25vl/codes/prompts/visual_demo_prompt_cot_gen.py and text_demo_prompt_cot_gen.py: the first
# text part is COT_INSTRUCTION_TRAIN + the demo-kind system text + "\n\nOur goal is {goal}."
# (VISUAL_DEMO_SYSTEM_PROMPT_TRAIN == TEXT_DEMO_SYSTEM_PROMPT_TRAIN).
COT_INSTRUCTION_TRAIN = (
    "Given the below Task and the Ground-truth Partial Response, you only need to fill the content within <ref_think></ref_think> and <score_think></score_think> to complete the response and should not change the Ground-truth Partial Response's content within <ref></ref> and <score></score>. Note that you need to pretend you do not know the ground-truth answer and provide a coherent reasoning chain based on what is given.\n"
    '\n'
    'The Task is:\n'
)

# visual_demo_prompt_cot_gen.py: VISUAL_DEMO_SYSTEM_PROMPT_INFERENCE, INSTRUCTION_PART1..3.
COT_VISUAL_SYSTEM = (
    'You are a progress estimator that evaluates the progress of the current state during an ongoing task based on a visual demonstration. The demonstration consists of a sequence of vision-based states and their corresponding progress value (ranging from 0% to 100%), showing how the task evolves from start to completion.'
)

COT_GOAL = "\n\nOur goal is {goal}."
COT_DEMO_INTRO = "Here is the demonstration:"
COT_VISUAL_SHIFTS = "The progress shifts across all given visual demos is: {shifts}"  # shifts: "<image> 0% <image> 25% ..."
COT_VISUAL_CURRENT = "Here is the current state that you need to estimate:"
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

# text_demo_prompt_cot_gen.py: TEXT_DEMO_SYSTEM_PROMPT_INFERENCE, INSTRUCTION_PART2, PART3 (the one in use).
COT_TEXT_SYSTEM = (
    'You are a progress estimator that evaluates the progress of the current state during an ongoing task based on a textual demonstration. The demonstration consists of a sequence of text-based steps and their corresponding progress value (ranging from 0% to 100%), showing how the task evolves from start to completion.'
)

COT_TEXT_STEP = "Step {index}. {text}\nThe Progress for now is {percent}%."  # steps joined by "\n\n"
COT_TEXT_CURRENT = "Here is the image of the current state that you need to estimate:"
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

# build_ground_truth_section() of each file: the hint, the last text part of the prompt.
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

# ---- text unanswerable: object replacement ------------------------------------------------------
# eval/qwen25vl/codes/prompts/text_object_replacement_prompt.py (run by run_text_object_replacement_single.py):
# system prompt a single space; user content = the observation image, then this text. {steps} is
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

# ---- image unanswerable: adversarial edit proposal ----------------------------------------------
# eval/qwen25vl/codes/prompts/adversarial_editing_prompt.py (run by run_adversarial_editing_single.py):
# system prompt EDIT_SYSTEM; user content = the observation image, then EDIT_PROMPT. {steps} is
# "1. step\n2. step..." ("" without steps); {index} the 1-based matching step, {step} its text.
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
# The three strategies the prompt names, as written in it.
EDIT_STRATEGIES = ("Color Change", "Object Replacement", "Occlusion/Removal")

# ---- guided CoT generation for unanswerable records ----------------------------------------------
# eval/qwen25vl/codes/prompts/visual_nega_prompt.py (run by run_visual_nega_72B.py) and text_nega_prompt.py
# (run by run_text_nega.py), both with no system message. Visual: the cot_gen layout with NEGA_VISUAL_TASK
# and NEGA_HINT_VISUAL. Text: NEGA_TEXT_INSTRUCTION_TRAIN + COT_TEXT_SYSTEM + goal, the cot_gen text parts,
# and the hint BEFORE the task instructions (COT_TEXT_TASK, the same text); {original_step} is the step
# the unedited observation showed (raw_text_demo[rank] in the official input).
NEGA_TEXT_INSTRUCTION_TRAIN = (
    "Given the below Task, the Ground-truth Partial Response, and the Additional Hint, you only need to fill the "
    "content within <ref_think></ref_think> and <score_think></score_think> to complete the response and should "
    "not change the Ground-truth Partial Response's content within <ref></ref> and <score></score>. Note that you "
    "need to pretend you do not know the ground-truth answer and provide a coherent reasoning chain based on what "
    "is given.\n\nThe Task is:\n"
)
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
