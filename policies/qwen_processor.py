"""An image-only Qwen2-VL processor: Qwen-Image-Edit's prompt encoder front end, no torchvision.

The stock `Qwen2VLProcessor` also wants a video processor, which needs torchvision (not installed
here and not needed to edit images): building it with `video_processor=None` fails, and loading a
saved pipeline asks for one. This subclass takes only the image processor and the tokenizer; the
processor derives its parts from the `__init__` signature (`ProcessorMixin.get_attributes`), so the
video part is simply absent. It is the documented exception to "never subclass a library class".
"""

from transformers import Qwen2VLProcessor
from transformers.processing_utils import ProcessorMixin

from rewards.vlm import IMAGE_TOKEN, VIDEO_TOKEN


class QwenImageEditProcessor(Qwen2VLProcessor):
    """`Qwen2VLProcessor` for images only; loads a real checkpoint's `processor/` folder too."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs) -> None:
        self.image_token = IMAGE_TOKEN
        self.video_token = VIDEO_TOKEN
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.video_token_id = tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)
        # Skip Qwen2VLProcessor.__init__: it would require the video processor.
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)
